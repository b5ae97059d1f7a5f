"""``--malloc``: the serving process re-executes itself under tcmalloc/jemalloc (same PID, same arguments)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rerankd.allocator import AllocatorError, auto_applies, find_library, loaded_allocator, use_allocator

SCRIPT = """
import os, sys
from rerankd.allocator import loaded_allocator, use_allocator
print("before", os.getpid(), loaded_allocator(), sys.argv[2:], os.environ.get("MALLOC_CONF"), flush=True)
print("after", use_allocator(sys.argv[1]), os.getpid(), flush=True)
"""


def run_script(tmp_path: Path, choice: str, env: dict[str, str]) -> list[list[str]]:
    """Run SCRIPT with ``choice``; its stdout lines, split into [tag, pid, rest]."""
    script = tmp_path / "alloc_probe.py"
    script.write_text(SCRIPT)
    out = subprocess.run([sys.executable, str(script), choice, "--keep", "this arg"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [line.split(" ", 2) for line in out.stdout.splitlines()]


def clean_env() -> dict[str, str]:
    """This environment without any allocator setting: the child starts under glibc."""
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF", "RERANKD_MALLOC_REEXEC")}


@pytest.mark.parametrize("name", ["tcmalloc", "jemalloc"])
def test_reexec_under_the_named_allocator_keeps_pid_and_arguments(tmp_path: Path, name: str) -> None:
    assert find_library(name) is not None, f"{name} is not installed (.ci/run installs it)"
    lines = run_script(tmp_path, name, clean_env())
    # The first process runs under glibc, re-executes itself; the second has the library mapped and returns.
    assert [line[0] for line in lines] == ["before", "before", "after"]
    pid = lines[0][1]
    assert all(pid in " ".join(line) for line in lines), lines
    assert lines[0][2].startswith("None") and lines[1][2].startswith(name)
    assert "['--keep', 'this arg']" in lines[1][2]
    assert lines[2] == ["after", name, pid]
    if name == "jemalloc":  # freed pages are kept, or the page faults come back
        assert "dirty_decay_ms:-1" in lines[1][2]


def test_auto_prefers_tcmalloc_and_system_does_not_reexec(tmp_path: Path) -> None:
    assert run_script(tmp_path, "auto", clean_env())[-1][1] == "tcmalloc"
    lines = run_script(tmp_path, "system", clean_env())
    assert [line[0] for line in lines] == ["before", "after"]
    assert lines[-1][1] == "system"


def test_auto_keeps_an_allocator_the_operator_preloaded(tmp_path: Path) -> None:
    library = find_library("jemalloc")
    assert library is not None
    lines = run_script(tmp_path, "auto", {**clean_env(), "LD_PRELOAD": str(library)})
    assert [line[0] for line in lines] == ["before", "after"]  # no re-exec: jemalloc was already there
    assert lines[-1][1] == "jemalloc"


def test_a_named_allocator_that_is_not_installed_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(AllocatorError, match=r"install libtcmalloc-minimal4 .* or use --malloc auto"):
        use_allocator("tcmalloc", search_dirs=[str(tmp_path)])
    with pytest.raises(AllocatorError, match="one of auto, tcmalloc, jemalloc, system"):
        use_allocator("mimalloc")


def test_auto_without_any_library_warns_and_keeps_glibc(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    if loaded_allocator() is not None:
        pytest.fail("the test process itself runs under a preloaded allocator; run pytest without LD_PRELOAD")
    with caplog.at_level(logging.WARNING, logger="rerankd.allocator"):
        assert use_allocator("auto", search_dirs=[str(tmp_path)]) == "system"
    assert "apt-get install -y libtcmalloc-minimal4" in caplog.text


def test_no_exec_loop_when_the_preload_did_not_take(monkeypatch: pytest.MonkeyPatch,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("RERANKD_MALLOC_REEXEC", "tcmalloc")  # as if this process were the re-executed one
    with caplog.at_level(logging.WARNING, logger="rerankd.allocator"):
        assert use_allocator("tcmalloc") == "system"
    assert "did not take effect" in caplog.text


def test_loaded_allocator_reads_the_process_maps(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text("7f0 r-xp 00000000 08:01 12 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n")
    assert loaded_allocator(maps) == "tcmalloc"
    maps.write_text("7f0 r-xp 00000000 08:01 12 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert loaded_allocator(maps) is None
    assert loaded_allocator(tmp_path / "missing") is None


def test_auto_acts_only_where_the_torch_backend_may_run_on_the_cpu() -> None:
    assert auto_applies("auto", "auto") and auto_applies("torch", "cpu")
    assert not auto_applies("vllm", "auto") and not auto_applies("torch", "cuda")
