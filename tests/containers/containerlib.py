"""Helpers of tests/containers: the docker CLI of tests/containers/run's daemon, and waiting on containers."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = os.environ.get("CONTAINER_TESTS_DOCKER", "docker")
MODEL = Path(os.environ.get("CONTAINER_TESTS_MODEL", "/nonexistent"))
IMAGES = {
    "server": "rerankd-server-cpu:0.1.0",
    "gateway": "rerankd-gateway:0.1.0",
    "ui": "rerankd-ui:0.1.0",
    "cuda": "rerankd-server-cuda:0.1.0-standin",  # server-cuda.Dockerfile on the CPU Python stand-in
}
DOCUMENTS = ["Paris is the capital of France.", "Bananas are yellow.", "France's capital city is Paris."]


def docker(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def inspect(name: str) -> dict[str, Any]:
    return json.loads(docker("inspect", name).stdout)[0]  # type: ignore[no-any-return]


def logs(name: str) -> str:
    proc = docker("logs", name, check=False)
    return proc.stdout + proc.stderr


def host_port(name: str, port: int) -> int:
    """The 127.0.0.1 port Docker published for the container's ``port``."""
    out = docker("port", name, str(port)).stdout.split()[0]
    return int(out.rsplit(":", 1)[1])


def wait_until(condition: Callable[[], object], timeout: float, what: str, on_fail: Callable[[], str] = str) -> None:
    """Return once ``condition()`` is true (it observes the event); fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{on_fail()[-4000:]}")
        time.sleep(0.25)


def running(name: str) -> bool:
    state = inspect(name)["State"]
    assert state["Status"] in ("created", "running"), f"{name} is {state['Status']} ({state['ExitCode']}):\n" + logs(
        name)[-4000:]
    return bool(state["Running"])


def wait_healthy(name: str, timeout: float = 300) -> None:
    """The image's own HEALTHCHECK reports healthy (an unhealthy verdict or an exit fails at once)."""
    def healthy() -> bool:
        running(name)
        status = inspect(name)["State"]["Health"]["Status"]
        assert status != "unhealthy", f"{name} unhealthy: {inspect(name)['State']['Health']['Log'][-3:]}"
        return status == "healthy"
    wait_until(healthy, timeout, f"{name}'s HEALTHCHECK to say healthy", lambda: logs(name))


def get_ok(url: str, **kwargs: Any) -> bool:
    try:
        return httpx.get(url, timeout=5, **kwargs).status_code == 200
    except httpx.HTTPError:
        return False


def _pod(deployment: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy/k8s/base" / f"{deployment}.yaml").read_text()) if d]
    (dep,) = (d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == f"rerankd-{deployment}")
    return dep["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def _container(deployment: str) -> dict[str, Any]:
    (container,) = _pod(deployment)["containers"]
    return container  # type: ignore[no-any-return]


def writable_paths(deployment: str) -> list[str]:
    """The paths a Kubernetes container of ``deployment`` (deploy/k8s/base/<deployment>.yaml) may write when
    its manifest asks for a read-only root filesystem: its emptyDir mounts. Empty: the manifest does not ask."""
    spec = _pod(deployment)
    container = _container(deployment)
    if not container.get("securityContext", {}).get("readOnlyRootFilesystem"):
        return []
    empty = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    return [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in empty]


def k8s_like(deployment: str) -> list[str]:
    """`docker run` options for the same filesystem as on Kubernetes: a read-only root where the manifest asks
    for one, with its emptyDirs as tmpfs (exec allowed, as an emptyDir: torch.compile loads its kernels there)."""
    options = []
    context = _container(deployment).get("securityContext", {})
    if "ALL" in context.get("capabilities", {}).get("drop", []):
        options += ["--cap-drop", "ALL"]
    if context.get("allowPrivilegeEscalation") is False:
        options += ["--security-opt", "no-new-privileges"]
    paths = writable_paths(deployment)
    if paths:
        options.append("--read-only")
    for path in paths:
        options += ["--tmpfs", f"{path}:rw,exec,mode=1777"]
    return options
