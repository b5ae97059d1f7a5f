"""A real ``rerankd serve`` process for the scripts that measure the server over HTTP: start, wait, measure RSS."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

__all__ = ["Served", "rss_mb", "serving"]


@dataclass(frozen=True)
class Served:
    url: str
    pid: int


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB, from ``/proc`` (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(model: str, *flags: str, timeout: float = 180.0) -> Iterator[Served]:
    """``rerankd serve --model MODEL FLAGS...`` on a free port; yields once ``/ready`` answers 200."""
    port = _free_port()
    args = [sys.executable, "-m", "rerankd.cli", "serve", "--model", model, "--port", str(port),
            "--log-level", "warning", *flags]
    proc = subprocess.Popen(args)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"rerankd serve exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("rerankd serve did not become ready")
            time.sleep(0.2)
        yield Served(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
