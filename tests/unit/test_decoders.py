"""Every :class:`Decoder` gives the same last-token logits for the same rows (fp32, 1e-4), with and without a
shared-prefix cache gathered to rows; the decoder is chosen by ``--compile`` and device, and the fused
forward's attention kernel by device."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from rerankd.engine.backends.decoders import Decoder, FusedDecoder, TransformersDecoder
from rerankd.engine.backends.qwen3_forward import (
    SPLIT_ATTENTION_MIN_COLUMNS,
    AttentionKernel,
    FusedQwen3Forward,
    choose_attention,
    compile_supported,
)
from rerankd.engine.backends.torch_backend import choose_decoder

YES, NO = 9693, 2152

# Every decoder, fused ones with and without compiled kernels and with the split attention for every
# chunk after a cache (in production only long chunks take it).
DECODERS: dict[str, Callable[[Any], Decoder]] = {
    "transformers": TransformersDecoder,
    "fused": lambda body: FusedDecoder(FusedQwen3Forward(body, compile_kernels=False)),
    "fused-split": lambda body: FusedDecoder(FusedQwen3Forward(body, compile_kernels=False, split_min_columns=1)),
    "fused-compiled": lambda body: FusedDecoder(FusedQwen3Forward(body, compile_kernels=True)),
}


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def w_diff(model: Any) -> torch.Tensor:
    head = model.get_output_embeddings().weight
    return (head[YES] - head[NO]).float()


def pad_right(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(r) for r in rows])
    ids = torch.zeros((len(rows), int(lengths.max())), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).long()
    return ids, mask, lengths


def run(decoder: Decoder, w_diff: torch.Tensor, rows: list[list[int]], *, cache: Any = None,
        cached_mask: torch.Tensor | None = None, cached_lengths: torch.Tensor | None = None,
        keep_cache: bool = False) -> tuple[list[float], Any]:
    """One chunk of rows through the interface: the logit at each row's last real token, and the cache."""
    ids, mask, lengths = pad_right(rows)
    base = cached_lengths if cached_lengths is not None else torch.zeros(len(rows), dtype=torch.long)
    positions = base[:, None] + torch.arange(ids.shape[1])[None, :]
    visible = None if cached_mask is None else cached_mask.bool()
    with torch.inference_mode():
        states, cache = decoder.run_chunk(ids, positions, mask, cache=cache, cached_visible=visible,
                                          keep_cache=keep_cache, select=(torch.arange(len(rows)), lengths - 1))
        return (states.float() @ w_diff).tolist(), cache


PREFIXES = [list(range(300, 320)), list(range(500, 513))]  # 20 and 13 tokens: the second padded after the first
TAILS = [[7, 8, 9, 10, 11], [40, 41], [900, 901, 902, 903, 904, 905, 906]]
ROW_PREFIX = [1, 0, 1]  # tail i follows PREFIXES[ROW_PREFIX[i]]


@pytest.fixture(scope="module")
def full_rows_reference(model: Any) -> list[float]:
    """The model card's way, one whole row (prefix + tail) at a time, no padding, no cache, every logit:
    logit("yes") - logit("no") at the last token. What every decoder on every path must equal."""
    want = []
    with torch.inference_mode():
        for p, t in zip(ROW_PREFIX, TAILS, strict=True):
            logits = model(input_ids=torch.tensor([PREFIXES[p] + t])).logits[0, -1]
            want.append(float(logits[YES] - logits[NO]))
    assert max(want) - min(want) > 0.05  # the rows score differently: a wrong row or mask shows
    return want


def close(a: list[float], b: list[float]) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4


@pytest.mark.parametrize("name", DECODERS)
def test_decoders_score_whole_rows_alike(model: Any, w_diff: torch.Tensor, full_rows_reference: list[float],
                                         name: str) -> None:
    if name == "fused-compiled" and compile_supported() is not None:
        pytest.skip(f"torch.compile unavailable: {compile_supported()}")
    rows = [PREFIXES[p] + t for p, t in zip(ROW_PREFIX, TAILS, strict=True)]
    got, cache = run(DECODERS[name](model.model), w_diff, rows)
    assert close(got, full_rows_reference), (got, full_rows_reference)
    assert cache is None  # not asked for


@pytest.mark.parametrize("name", DECODERS)
def test_decoders_score_tails_after_a_gathered_prefix_cache_like_whole_rows(
        model: Any, w_diff: torch.Tensor, full_rows_reference: list[float], name: str) -> None:
    """Two prefixes run once, their cache gathered to three rows (1, 0, 1), the tails after it: the same
    logits as the whole rows. A gather that took the wrong rows, or a mask that showed the shorter
    prefix's padding, would move them."""
    if name == "fused-compiled" and compile_supported() is not None:
        pytest.skip(f"torch.compile unavailable: {compile_supported()}")
    decoder = DECODERS[name](model.model)
    _, prefix_mask, prefix_lengths = pad_right(PREFIXES)
    _, cache = run(decoder, w_diff, PREFIXES, keep_cache=True)
    rows = torch.tensor(ROW_PREFIX)
    with torch.inference_mode():
        cache = decoder.gather_rows(cache, rows)
    got, _ = run(decoder, w_diff, TAILS, cache=cache, cached_mask=prefix_mask[rows],
                 cached_lengths=prefix_lengths[rows])
    assert close(got, full_rows_reference), (got, full_rows_reference)


def test_the_decoder_is_chosen_by_compile_and_device(model: Any) -> None:
    """Chosen without running anything on the device named (none of this machine's is CUDA)."""
    body = model.model
    assert isinstance(choose_decoder(body, "off", "cpu"), TransformersDecoder)
    assert isinstance(choose_decoder(body, "auto", "cuda"), TransformersDecoder)
    if compile_supported() is None:
        assert isinstance(choose_decoder(body, "auto", "cpu"), FusedDecoder)
        assert isinstance(choose_decoder(body, "on", "cuda"), FusedDecoder)
    with pytest.raises(ValueError, match="compile must be one of auto, on, off"):
        choose_decoder(body, "yes", "cpu")


@pytest.mark.parametrize("device", ["cpu", "cuda", "meta"])
def test_split_attention_only_where_the_cpu_flash_kernel_runs(device: str) -> None:
    """The split attention calls ATen's CPU-only flash kernel: elsewhere long chunks after a cache take the
    dense mask instead."""
    dev = torch.device(device)
    long = SPLIT_ATTENTION_MIN_COLUMNS
    assert choose_attention(dev, long, cached=False, split_min_columns=long) is AttentionKernel.CAUSAL
    assert choose_attention(dev, long - 1, cached=True, split_min_columns=long) is AttentionKernel.DENSE_MASK
    want = AttentionKernel.SPLIT if device == "cpu" else AttentionKernel.DENSE_MASK
    assert choose_attention(dev, long, cached=True, split_min_columns=long) is want


def test_the_fused_forward_off_the_cpu_never_takes_the_split_attention(tiny_model_dir: Path) -> None:
    """The whole fused forward on the meta device (shapes only; a stand-in for CUDA, which this machine
    lacks), split attention asked for on every chunk after a cache: it runs, and the split attention
    itself refuses a non-CPU tensor rather than call the CPU kernel."""
    with torch.device("meta"):
        body = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_model_dir)).model
    fused = FusedQwen3Forward(body, compile_kernels=False, split_min_columns=1)
    ids = torch.zeros((2, 5), dtype=torch.long, device="meta")
    positions = torch.arange(5, device="meta")[None].expand(2, -1)
    with torch.inference_mode():
        _, cache = fused(ids, positions, None, keep_cache=True)
        visible = torch.ones((2, 5), dtype=torch.bool, device="meta")
        out, _ = fused(ids, positions + 5, visible, past=cache)
    assert out.shape == (2, 5, body.config.hidden_size) and out.device.type == "meta"
    q = torch.zeros((1, 2, 3, 4), device="meta")
    with pytest.raises(ValueError, match="CPU flash kernel only, not on meta"):
        fused._split_attention(q, q, q, q, q, torch.zeros((1, 1, 3, 3), device="meta"))
