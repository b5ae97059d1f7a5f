"""Cohere's current SDK (7.x) passes the same tests as 5.x (test_cohere_sdk.py), against this run's stack.

cohere 7 cannot share an environment with langchain-cohere (cohere < 6) and llama-index's Cohere reranker (< 7),
so ``tests/clients/run`` installs it alone into ``.venv-clients/cohere7`` (its dependencies are those of cohere 5,
already installed) and this test runs test_cohere_sdk.py in a second pytest with that directory first on
``PYTHONPATH``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clients.common import Stack

COHERE7 = Path(sys.prefix) / "cohere7"


def test_cohere_7_passes_the_cohere_sdk_tests(stack: Stack) -> None:
    if not (COHERE7 / "cohere").is_dir():
        pytest.skip(f"cohere 7 is not installed in {COHERE7} (tests/clients/run installs it)")
    path = os.pathsep.join(p for p in (str(COHERE7), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "RERANKD_CLIENTS_COHERE_MAJOR": "7",
           "RERANKD_CLIENTS_STACK": json.dumps({**dataclasses.asdict(stack), "data_dir": str(stack.data_dir)})}
    here = Path(__file__).resolve().parent
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA",
                          str(here / "test_cohere_sdk.py")],
                         cwd=here.parent.parent, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "PASSED tests/clients/test_cohere_sdk.py::test_the_sdk_under_test_is_the_expected_one" in run.stdout
