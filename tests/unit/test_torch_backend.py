"""TorchBackend: shared-prefix reuse and chunked long rows give the same scores as one plain pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from rerankd.engine.backends.base import TokenGroup
from rerankd.engine.backends.torch_backend import TorchBackend, resolve_dtype
from rerankd.engine.prompt import PromptBuilder


@pytest.fixture(scope="module")
def groups(tiny_model_dir: Path) -> list[TokenGroup]:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    builder = PromptBuilder(tokenizer, 2048)
    a = builder.build("first query about cats", ["cats purr", "dogs bark loudly " * 50, "短文本"])
    b = builder.build("second, different query", ["a document " * 120, "x"], instruction="Find code")
    return [TokenGroup(a.shared, a.tails), TokenGroup(b.shared, b.tails)]


def scores(model_dir: Path, groups: list[TokenGroup], **kwargs) -> list[float]:
    """Batched passes (the shared-prefix and chunking paths of several rows; test_batch_invariance has the rest)."""
    backend = TorchBackend(model_dir, yes_token_id=9693, no_token_id=2152, max_model_len=2048, device="cpu",
                           dtype="float32", batch_invariant="off", **kwargs)
    return [x for g in backend.score(groups) for x in g]


def test_prefix_reuse_and_chunking_change_nothing(tiny_model_dir: Path, groups: list[TokenGroup]) -> None:
    plain = scores(tiny_model_dir, groups, prefix_reuse=False, chunk_tokens=100_000)
    reused = scores(tiny_model_dir, groups, prefix_reuse=True, chunk_tokens=100_000)
    chunked = scores(tiny_model_dir, groups, prefix_reuse=False, chunk_tokens=16)
    both = scores(tiny_model_dir, groups, prefix_reuse=True, chunk_tokens=7)
    for other in (reused, chunked, both):
        assert max(abs(x - y) for x, y in zip(plain, other, strict=True)) < 1e-4
    assert max(plain) - min(plain) > 0.1


def test_dtype_auto_is_explicit_elsewhere() -> None:
    import torch

    assert resolve_dtype("float32", "cpu") is torch.float32
    assert resolve_dtype("bfloat16", "cpu") is torch.bfloat16
    assert resolve_dtype("auto", "cpu") in (torch.float32, torch.bfloat16)


@pytest.mark.parametrize("native_bf16", [False, True])
def test_bf16_on_a_cpu_without_native_bf16_warns(tiny_model_dir: Path, native_bf16: bool,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    import rerankd.engine.backends.torch_backend as module

    monkeypatch.setattr(module, "cpu_has_fast_bf16", lambda: native_bf16)
    with caplog.at_level("WARNING", logger=module.__name__):
        backend = TorchBackend(tiny_model_dir, yes_token_id=9693, no_token_id=2152, max_model_len=2048,
                               device="cpu", dtype="bfloat16")
    assert backend.info.dtype == "bfloat16"  # the operator's choice stands; only the advice differs
    warned = [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()]
    assert bool(warned) is not native_bf16
    if warned:
        assert "--dtype auto" in warned[0]
