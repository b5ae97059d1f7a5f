"""rerankd.engine.bulk: bulk work's threads run at a lower OS priority, and so do the threads they start.

Observed in /proc (Linux keeps a nice value per thread), in a child process where the tokenizer's pool must be
started: in this one an earlier test may have started it already.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rerankd.engine import bulk

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")

CHILD = textwrap.dedent("""
    import json, os, sys
    from transformers import AutoTokenizer
    from rerankd.engine.bulk import start_tokenizer_pool, thread_nice

    tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
    if sys.argv[2] == "start":
        start_tokenizer_pool(tokenizer, 3)
    tokenizer([f"document {i}" for i in range(64)], add_special_tokens=False)  # a request's batch call
    nices = [thread_nice(int(t)) for t in os.listdir("/proc/self/task")]
    print(json.dumps({"caller": thread_nice(), "threads": nices}))
""")


def _thread_nices(model_dir: Path, mode: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(model_dir), mode], capture_output=True, text=True,
                          timeout=120, env={"TOKENIZERS_PARALLELISM": "true", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_the_tokenizers_pool_started_by_a_lower_priority_thread_keeps_its_priority(tiny_model_dir: Path) -> None:
    own = bulk.thread_nice()
    started = _thread_nices(tiny_model_dir, "start")
    assert started["caller"] == own  # the thread that tokenizes a request keeps the usual priority
    assert own + 3 in started["threads"]  # the pool's threads, which do the batch call's work
    plain = _thread_nices(tiny_model_dir, "plain")
    assert own + 3 not in plain["threads"]  # without it the pool runs at the usual priority


def test_a_lower_priority_executor_runs_below_the_caller() -> None:
    own = bulk.thread_nice()
    with bulk.lower_priority_executor(2, "test-bulk") as executor:
        assert executor.submit(bulk.thread_nice).result() == min(bulk.MAX_NICE, own + 2)
    assert bulk.thread_nice() == own  # the caller's own priority is untouched


def test_the_gil_switch_interval_is_shortened_never_lengthened() -> None:
    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        bulk.hand_over_the_gil_often()
        assert sys.getswitchinterval() == pytest.approx(bulk.SWITCH_INTERVAL_S, rel=0.05)
        sys.setswitchinterval(0.0001)
        bulk.hand_over_the_gil_often()
        assert sys.getswitchinterval() == pytest.approx(0.0001, rel=0.05)  # kept: the interpreter stores µs
    finally:
        sys.setswitchinterval(before)
