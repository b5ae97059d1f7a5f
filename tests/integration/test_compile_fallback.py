"""`--compile auto` falling back to transformers' forward says what is really missing, in a real process.

The two things torch.compile needs on a CPU, each taken away for real in a child process (which waits for the
background compile of ``--compile auto`` to give up): Python's C
headers (the include directory the interpreter reports is pointed at an empty one, as in an image without
them) and the C++ compiler (CXX names one that does not exist). inductor's error for the first is a
"C++ compile error" whose cause sits deep in the compiler's output; the warning must name the headers, not
the compiler, which is there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# In the child: optionally hide Python.h, then build the torch backend with --compile auto and log the warning.
CHILD = """
import logging, sys, sysconfig
if sys.argv[2]:
    real, hidden = sysconfig.get_path, sys.argv[2]
    sysconfig.get_path = lambda name, *a, **k: hidden if name in ("include", "platinclude") else real(name, *a, **k)
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
from rerankd.engine.backends.torch_backend import TorchBackend
from rerankd.engine.backends.decoders import TransformersDecoder
backend = TorchBackend(sys.argv[1], yes_token_id=9693, no_token_id=2152, max_model_len=512, device="cpu",
                       dtype="float32", compile="auto")
if backend.compile_thread is not None:  # auto compiles in the background after start-up: wait for its verdict
    backend.compile_thread.join()
print("decoder:", type(backend.decoder).__name__, file=sys.stderr)
"""


def fallback_warning(model: Path, tmp_path: Path, *, include: str = "", cxx: str | None = None) -> str:
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}  # nothing compiled before
    if cxx is not None:
        env["CXX"] = cxx
    proc = subprocess.run([sys.executable, "-c", CHILD, str(model), include], capture_output=True, text=True,
                          env=env, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "decoder: TransformersDecoder" in proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "compiled kernels unavailable" in line]
    assert len(warnings) == 1, proc.stderr[-3000:]
    return warnings[0]


def test_missing_python_headers_are_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "include"
    empty.mkdir()
    warning = fallback_warning(tiny_model_dir, tmp_path, include=str(empty))
    assert "Python's C headers are missing" in warning and f"no Python.h in {empty}" in warning
    assert f"python{sys.version_info.major}.{sys.version_info.minor}-dev" in warning
    assert "g++" not in warning and "compiler" not in warning  # the compiler is there: do not send people to it


def test_missing_compiler_is_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    warning = fallback_warning(tiny_model_dir, tmp_path, cxx="/nonexistent/g++")
    assert "no working C++ compiler (/nonexistent/g++ was tried)" in warning
    assert "Python.h" not in warning
