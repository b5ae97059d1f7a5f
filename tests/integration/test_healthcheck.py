"""The images' HEALTHCHECK (`python -m rerankd.deployment.healthcheck`) probes the port the process really uses.

Real processes: an alert relay (the lightest rerankd server) started with `--port`, or with RERANKD_PORT and
no flag, is found by PID and probed on that port; the HEALTHCHECKs used to probe a fixed 8000/8080/7860,
which a changed port made fail while the server was fine. In the containers themselves the same probe runs
as the image's HEALTHCHECK (tests/containers).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support import free_port, process_env, wait_until


def probe(pid: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "rerankd.deployment.healthcheck", "--pid", str(pid), *extra],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(port_by: str) -> tuple[subprocess.Popen[bytes], int]:
        port = free_port()
        env = {**process_env(), "RERANKD_DINGTALK_URL": "http://127.0.0.1:9/robot/send"}
        args = [sys.executable, "-m", "rerankd.cli", "alert-relay", "--host", "127.0.0.1"]
        if port_by == "flag":
            args += ["--port", str(port)]
        else:
            env["RERANKD_PORT"] = str(port)
        log = (tmp_path / f"relay-{port}.log").open("ab")
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        started.append(proc)

        def answers() -> bool:
            assert proc.poll() is None, (tmp_path / f"relay-{port}.log").read_text()
            try:
                return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, 60, "the alert relay's /health")
        return proc, port

    yield start  # type: ignore[misc]
    for proc in started:
        proc.terminate()
        proc.wait(30)


@pytest.mark.parametrize("port_by", ["flag", "RERANKD_PORT"])
def test_probe_follows_the_port_the_process_listens_on(relay: object, port_by: str) -> None:
    proc, port = relay(port_by)  # type: ignore[operator]
    result = probe(proc.pid)
    assert result.returncode == 0, result.stderr
    assert f"GET http://127.0.0.1:{port}/health: 200" in result.stdout


def test_probe_fails_when_the_server_does_not_answer(relay: object) -> None:
    proc, port = relay("flag")  # type: ignore[operator]
    proc.send_signal(signal.SIGSTOP)  # alive, port open, never answers
    try:
        result = probe(proc.pid, "--timeout", "1")
    finally:
        proc.send_signal(signal.SIGCONT)
    assert result.returncode == 1
    assert f"GET http://127.0.0.1:{port}/health" in result.stderr and "timed out" in result.stderr


def test_probe_fails_when_the_process_is_gone(relay: object) -> None:
    proc, _ = relay("flag")  # type: ignore[operator]
    proc.terminate()
    proc.wait(30)
    result = probe(proc.pid)  # gone: no process, so unhealthy
    assert result.returncode == 1
    assert "no rerankd" in result.stderr


def test_probe_of_a_process_that_is_not_rerankd_is_unhealthy() -> None:
    result = probe(os.getpid())  # pytest
    assert result.returncode == 1 and "no rerankd" in result.stderr
