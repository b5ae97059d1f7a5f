"""`rerankd serve`'s exit status, as a supervisor (Kubernetes, systemd, `rerankd up`) reads it: a model that
cannot load is a failure, not a clean stop, and an unreadable model directory says so."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rerankd.server.command import EXIT_BAD_MODEL_PATH, EXIT_MODEL_LOAD_FAILED
from support import free_port

_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH = 1, 2


def _without_root_file_access() -> None:
    """In the child, before exec: drop the two capabilities that let root read any file, so permissions apply
    to it as to any user. (Running it as another user is no option here: the interpreter lives under /root.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _as_unprivileged() -> Callable[[], None] | None:
    if os.geteuid() != 0:
        return None
    try:
        subprocess.run([sys.executable, "-c", "pass"], preexec_fn=_without_root_file_access, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot drop root's file-access capabilities here: {exc}")
    return _without_root_file_access


def serve(model: Path, preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rerankd.cli", "serve", "--model", str(model), "--device", "cpu", "--malloc", "system",
         "--port", str(free_port())],
        capture_output=True, text=True, timeout=180, preexec_fn=preexec_fn)


@pytest.fixture
def world_readable_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's tmp_path lies under a root-only 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="rerankd-perm-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for sub in (path, *path.rglob("*")):
            sub.chmod(0o755)
        shutil.rmtree(path)


def test_a_model_that_fails_to_load_exits_non_zero(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "config.json").write_text('{"model_type": "qwen3", "hidden_size": ')  # cut off mid-write
    result = serve(broken)
    assert result.returncode == EXIT_MODEL_LOAD_FAILED != 0, result.stderr[-2000:]
    assert "model failed to load" in result.stderr
    assert f"exiting with status {EXIT_MODEL_LOAD_FAILED}" in result.stderr


@pytest.mark.parametrize("locked", ["the model directory", "its parent", "the weights file", "the tokenizer file"])
def test_an_unreadable_model_directory_says_permission_denied(tiny_model_dir: Path, world_readable_dir: Path,
                                                              locked: str) -> None:
    preexec_fn = _as_unprivileged()
    model = world_readable_dir / "parent" / "model"
    shutil.copytree(tiny_model_dir, model)
    # A directory, or one file in it (files copied from another user's cache are often 0600).
    target = {"the model directory": model, "its parent": model.parent,
              "the weights file": model / "model.safetensors", "the tokenizer file": model / "tokenizer.json"}[locked]
    target.chmod(0o000)
    result = serve(model, preexec_fn)
    assert result.returncode == EXIT_BAD_MODEL_PATH, result.stderr[-2000:]
    assert "permission denied" in result.stderr
    assert "No such file or directory" not in result.stderr and "does not exist" not in result.stderr
    assert "Traceback" not in result.stderr
