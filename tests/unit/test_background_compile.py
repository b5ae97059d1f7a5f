"""``--compile auto`` on the CPU: ready with transformers' forward, the compiled kernels built in a background
thread and swapped in between two forward passes; a failure there keeps the eager forward."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from rerankd.engine.backends.base import TokenGroup
from rerankd.engine.backends.decoders import FusedDecoder, TransformersDecoder
from rerankd.engine.backends.qwen3_forward import compile_supported
from rerankd.engine.backends.torch_backend import TorchBackend
from rerankd.engine.config import EngineConfig
from rerankd.engine.engine import load_engine
from rerankd.observability.metrics import ServerMetrics

YES, NO = 9693, 2152
GROUPS = [TokenGroup(list(range(300, 360)), [[7, 8, 9, 10], list(range(900, 940))]), TokenGroup([1, 2, 3], [[5, 6]])]


def _gauge(metrics: ServerMetrics) -> float | None:
    return metrics.registry.get_sample_value("rerankd_compiled_kernels_ready")


def test_auto_swaps_the_compiled_kernels_in_between_passes(tiny_model_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    if compile_supported() is not None:
        pytest.skip(f"torch.compile unavailable: {compile_supported()}")
    serving = threading.get_ident()
    used: list[str] = []  # the decoder of every chunk the serving thread ran (the warm-up runs elsewhere)
    for cls in (TransformersDecoder, FusedDecoder):
        def recording(self: Any, *args: Any, _run: Any = cls.run_chunk, **kwargs: Any) -> Any:
            if threading.get_ident() == serving:
                used.append(type(self).__name__)
            return _run(self, *args, **kwargs)
        monkeypatch.setattr(cls, "run_chunk", recording)

    metrics = ServerMetrics()
    engine = load_engine(EngineConfig(model=str(tiny_model_dir), device="cpu", dtype="bfloat16", compile="auto"),
                         metrics)
    backend = engine.batcher.backend
    assert isinstance(backend, TorchBackend)
    passes: list[set[str]] = []
    while True:  # serve passes until one starts after the compile thread finished
        # Between passes the serving thread waits on the compile thread's event for a while: back-to-back passes
        # on a 2-core CI machine starved a cold compile past the test's timeout.
        finished = backend.compile_done.wait(timeout=0.25)
        used.clear()
        backend.score(GROUPS)
        passes.append(set(used))
        if finished:
            break
    assert all(len(p) == 1 for p in passes), passes  # no pass mixed the two decoders
    assert passes[-1] == {"FusedDecoder"} and backend.kernels == "fused-compiled"
    assert _gauge(metrics) == 1.0
    # The kernels swapped in are --compile on's: the same bits.
    on = TorchBackend(tiny_model_dir, yes_token_id=YES, no_token_id=NO, max_model_len=4096, device="cpu",
                      dtype="bfloat16", compile="on")
    assert backend.score(GROUPS) == on.score(GROUPS)


def test_a_background_compile_failure_is_logged_once_and_keeps_the_eager_forward(
        tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken(self: FusedDecoder, run: Any) -> None:
        raise RuntimeError("inductor ran out of disk")

    monkeypatch.setattr(FusedDecoder, "warm_up", broken)
    metrics = ServerMetrics()
    with caplog.at_level("WARNING"):
        engine = load_engine(EngineConfig(model=str(tiny_model_dir), device="cpu", dtype="bfloat16"), metrics)
        backend = engine.batcher.backend
        assert isinstance(backend, TorchBackend)
        assert backend.compile_done.wait(600)
    failures = [r for r in caplog.records if "failed to build in the background" in r.getMessage()]
    assert len(failures) == 1 and "inductor ran out of disk" in failures[0].getMessage()
    assert backend.kernels == "transformers" and _gauge(metrics) == 0.0
    assert [len(s) for s in backend.score(GROUPS)] == [2, 1]


def test_compile_off_reports_no_compiled_kernels(tiny_model_dir: Path) -> None:
    metrics = ServerMetrics()
    engine = load_engine(EngineConfig(model=str(tiny_model_dir), device="cpu", dtype="float32", compile="off"),
                         metrics)
    assert engine.batcher.backend.compile_done.is_set()  # type: ignore[attr-defined]
    assert _gauge(metrics) == 0.0


def test_the_compile_cache_dir_is_where_inductor_looks(tiny_model_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # restored after the test
    load_engine(EngineConfig(model=str(tiny_model_dir), device="cpu", dtype="float32", compile="off",
                             compile_cache_dir=str(tmp_path / "inductor")), ServerMetrics())
    assert cache_dir() == str(tmp_path / "inductor")
