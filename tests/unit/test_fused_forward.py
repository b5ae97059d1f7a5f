"""The fused Qwen3 forward (compiled element-wise kernels) scores like transformers' forward, and
``--compile`` falls back or fails the way the README says."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from rerankd.engine.backends import qwen3_forward
from rerankd.engine.backends.base import TokenGroup
from rerankd.engine.backends.decoders import FusedDecoder, TransformersDecoder
from rerankd.engine.backends.qwen3_forward import FusedQwen3Forward
from rerankd.engine.backends.torch_backend import TorchBackend
from rerankd.engine.prompt import PromptBuilder

YES, NO = 9693, 2152


@pytest.fixture(scope="module")
def groups(tiny_model_dir: Path) -> list[TokenGroup]:
    builder = PromptBuilder(AutoTokenizer.from_pretrained(tiny_model_dir), 2048)
    a = builder.build("first query about cats", ["cats purr", "dogs bark loudly " * 50, "短文本", "cats purr"])
    b = builder.build("second, different and longer query", ["a document " * 120, "x"], instruction="Find code")
    return [TokenGroup(a.shared, a.tails), TokenGroup(b.shared, b.tails)]


def backend(model_dir: Path, compile: str, dtype: str = "float32", batch_invariant: str = "off") -> TorchBackend:
    """Batched passes by default: the paths these tests compare are the shared ones of several rows."""
    return TorchBackend(model_dir, yes_token_id=YES, no_token_id=NO, max_model_len=2048, device="cpu", dtype=dtype,
                        compile=compile, batch_invariant=batch_invariant)


def flat_scores(engine: TorchBackend, groups: list[TokenGroup], *, prefix_reuse: bool,
                chunk_tokens: int) -> list[float]:
    engine.prefix_reuse, engine.chunk_tokens = prefix_reuse, chunk_tokens
    return [x for g in engine.score(groups) for x in g]


# Plain rows; the shared prefix's KV gathered to rows (a dense mask over it); columns in chunks of 7
# (the cache grows chunk by chunk); both at once.
PATHS = [(False, 100_000), (True, 100_000), (False, 7), (True, 7)]


@pytest.fixture(scope="module")
def reference(tiny_model_dir: Path, groups: list[TokenGroup]) -> dict[tuple[bool, int], list[float]]:
    """transformers' own forward, fp32, on every path."""
    plain = backend(tiny_model_dir, "off")
    assert isinstance(plain.decoder, TransformersDecoder)
    return {path: flat_scores(plain, groups, prefix_reuse=path[0], chunk_tokens=path[1]) for path in PATHS}


def test_uncompiled_fused_forward_does_transformers_arithmetic(tiny_model_dir: Path, groups: list[TokenGroup],
                                                               reference: dict) -> None:
    """The hand-written forward, kernels not compiled: the same numbers up to fp32 summation order."""
    engine = backend(tiny_model_dir, "off")
    engine.decoder = FusedDecoder(FusedQwen3Forward(engine.body, compile_kernels=False))
    for path in PATHS:
        got = flat_scores(engine, groups, prefix_reuse=path[0], chunk_tokens=path[1])
        assert max(abs(x - y) for x, y in zip(reference[path], got, strict=True)) < 1e-5, path
    assert max(reference[PATHS[0]]) - min(reference[PATHS[0]]) > 0.1  # scores differ: the check has teeth


def test_compiled_forward_scores_like_transformers(tiny_model_dir: Path, groups: list[TokenGroup],
                                                  reference: dict) -> None:
    engine = backend(tiny_model_dir, "on")
    assert isinstance(engine.decoder, FusedDecoder)
    for path in PATHS:
        got = flat_scores(engine, groups, prefix_reuse=path[0], chunk_tokens=path[1])
        assert max(abs(x - y) for x, y in zip(reference[path], got, strict=True)) < 1e-4, path
        # Duplicate documents in one batch: the same score to rounding. Bit-identity across the rows of one
        # compiled batch holds on the AMX Xeon but not on an AVX-512 AMD EPYC (2.4e-7 apart: the compiled
        # kernels' row blocking); a score that must not depend on its batch is --batch-invariant's job
        # (tests/unit/test_batch_invariance.py), the same request's scores repeating is test_deterministic_scores.
        assert abs(got[0] - got[3]) < 1e-6, (path, got[0], got[3])


@pytest.mark.parametrize("compile", ["off", "on"])
def test_split_attention_after_a_cache_scores_like_transformers(tiny_model_dir: Path, groups: list[TokenGroup],
                                                                reference: dict, compile: str) -> None:
    """Chunks after a cache (shared prefix, earlier chunks) as two flash calls merged by log-sum-exp: the
    same numbers as one masked call. Forced on for every chunk here (long chunks only, in production)."""
    engine = backend(tiny_model_dir, "off")
    engine.decoder = FusedDecoder(FusedQwen3Forward(engine.body, compile_kernels=compile == "on", split_min_columns=1))
    for path in PATHS:
        got = flat_scores(engine, groups, prefix_reuse=path[0], chunk_tokens=path[1])
        assert max(abs(x - y) for x, y in zip(reference[path], got, strict=True)) < 1e-4, path


def test_compiled_bf16_ranks_like_fp32(tiny_model_dir: Path, groups: list[TokenGroup], reference: dict) -> None:
    got = flat_scores(backend(tiny_model_dir, "on", dtype="bfloat16"), groups, prefix_reuse=True,
                      chunk_tokens=100_000)
    want = reference[(True, 100_000)]
    assert max(abs(x - y) for x, y in zip(want, got, strict=True)) < 0.05 * (max(want) - min(want))


@pytest.mark.parametrize("batch_invariant", ["off", "on"])
def test_warm_up_leaves_nothing_to_compile_for_new_batch_shapes(tiny_model_dir: Path, groups: list[TokenGroup],
                                                                batch_invariant: str) -> None:
    """Kernels are compiled with dynamic shapes at start-up: new row counts and widths reuse them (batch-invariant
    passes are all one row wide: the warm-up's own passes are too)."""
    from torch._dynamo.utils import counters

    engine = backend(tiny_model_dir, "on", batch_invariant=batch_invariant)
    compiled = counters["stats"]["unique_graphs"]
    flat_scores(engine, groups, prefix_reuse=True, chunk_tokens=100_000)
    flat_scores(engine, groups[:1], prefix_reuse=False, chunk_tokens=100_000)
    flat_scores(engine, [TokenGroup(groups[1].shared, groups[1].tails[:1])], prefix_reuse=True, chunk_tokens=100_000)
    flat_scores(engine, groups, prefix_reuse=True, chunk_tokens=7)  # chunks where no row ends, or only some
    # every chunk after a cache takes the split attention
    engine.decoder = FusedDecoder(FusedQwen3Forward(engine.body, compile_kernels=True, split_min_columns=1))
    flat_scores(engine, groups, prefix_reuse=True, chunk_tokens=7)
    flat_scores(engine, [TokenGroup(groups[1].shared, groups[1].tails[:1])], prefix_reuse=True, chunk_tokens=7)
    assert counters["stats"]["unique_graphs"] == compiled


def test_selected_positions_skip_the_last_layer_for_the_rest_and_equal_the_full_output(tiny_model_dir: Path) -> None:
    """``select``: the last layer runs only the wanted (row, column) tokens; their states equal the full run's."""
    import torch

    engine = backend(tiny_model_dir, "off")
    fused = FusedQwen3Forward(engine.body, compile_kernels=False)
    ids = torch.randint(10, 1000, (3, 9))
    positions = torch.arange(9)[None].expand(3, -1)
    with torch.inference_mode():
        want = engine.body(input_ids=ids, position_ids=positions).last_hidden_state  # transformers, causal
        full, _ = fused(ids, positions, None)
        rows, cols = torch.tensor([0, 2, 1]), torch.tensor([8, 3, 0])
        picked, _ = fused(ids, positions, None, select=(rows, cols))
        # No row ends in this chunk: nothing comes back, and the cache is still complete.
        none, cache = fused(ids, positions, None, keep_cache=True, select=(rows[:0], cols[:0]))
        _, full_cache = fused(ids, positions, None, keep_cache=True)
    assert (full - want).abs().max() < 1e-5
    assert picked.shape == (3, full.shape[-1]) and (picked - full[rows, cols]).abs().max() < 1e-5
    assert none.shape == (0, full.shape[-1])
    assert len(cache) == len(full_cache)
    for (k, v), (full_k, full_v) in zip(cache, full_cache, strict=True):
        assert torch.equal(k, full_k) and torch.equal(v, full_v)


def test_compile_on_without_a_compiler_is_a_clear_error(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    reason = "no working C++ compiler (g++ was tried): install one (Debian/Ubuntu: g++) or set CXX"
    monkeypatch.setattr(qwen3_forward, "compile_supported", lambda: reason)
    expected = r"--compile on: torch.compile cannot be used here .*no working C\+\+.*--compile off"
    with pytest.raises(ValueError, match=expected):
        backend(tiny_model_dir, "on")
    with caplog.at_level("WARNING"):
        engine = backend(tiny_model_dir, "auto")
        assert engine.compile_done.wait(120)  # auto probes in the background, after the backend is ready
    assert isinstance(engine.decoder, TransformersDecoder)  # auto falls back to transformers' forward and still scores
    # The reason is the warning's, as compile_supported words it (tests/integration/test_compile_fallback.py).
    assert any(f"compiled kernels unavailable ({reason})" in r.getMessage() for r in caplog.records)
    assert len(engine.score([TokenGroup([1, 2, 3], [[4, 5], [6]])])[0]) == 2


def test_compile_choice_is_checked(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="compile must be one of auto, on, off"):
        backend(tiny_model_dir, "yes")


def test_sliding_window_models_keep_transformers_forward(tiny_model_dir: Path) -> None:
    engine = backend(tiny_model_dir, "off")
    engine.body.config.use_sliding_window = True
    with pytest.raises(ValueError, match="sliding-window"):
        FusedQwen3Forward(engine.body, compile_kernels=False)


def test_compile_flag_and_env_reach_the_backend(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import click

    from rerankd.engine.engine import load_engine
    from rerankd.server.command import serve
    from rerankd.server.settings import ServerSettings

    monkeypatch.setenv("RERANKD_COMPILE", "off")
    assert serve.make_context("serve", ["--model", "m"]).params["compile"] == "off"
    params = serve.make_context("serve", ["--model", str(tiny_model_dir), "--compile", "on"]).params
    assert params["compile"] == "on"  # the flag wins over the environment
    with pytest.raises(click.BadParameter):
        serve.make_context("serve", ["--model", "m", "--compile", "yes"])
    settings = ServerSettings(model=str(tiny_model_dir), device="cpu", dtype="float32", compile="off")
    engine = load_engine(settings.engine_config())
    assert isinstance(engine.batcher.backend.decoder, TransformersDecoder)
    settings = settings.model_copy(update={"compile": "on"})
    assert isinstance(load_engine(settings.engine_config()).batcher.backend.decoder, FusedDecoder)
