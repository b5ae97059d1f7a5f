import importlib
import importlib.util

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is not None, reason="these tests cover the no-vLLM install"
)


def test_module_imports_without_vllm():
    module = importlib.import_module("rerankd.engine.backends.vllm_backend")
    assert hasattr(module, "VllmBackend")


def test_vllm_not_available():
    from rerankd.engine.backends.vllm_backend import vllm_available

    assert vllm_available() is False


def test_constructing_without_vllm_raises():
    from rerankd.engine.backends.vllm_backend import VllmBackend

    with pytest.raises(RuntimeError, match=r"rerankd\[vllm\]"):
        VllmBackend("/nonexistent", yes_token_id=1, no_token_id=2, max_model_len=128)


def test_prob_to_logit_roundtrip_and_clamp():
    import math

    from rerankd.engine.backends.vllm_backend import prob_to_logit

    for x in (-12.5, -1.0, 0.0, 0.3, 7.25):
        assert prob_to_logit(1.0 / (1.0 + math.exp(-x))) == pytest.approx(x, abs=1e-9)
    assert prob_to_logit(1.0) == 40.0
    assert prob_to_logit(0.0) == -40.0
