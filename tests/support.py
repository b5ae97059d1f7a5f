"""What tests share besides fixtures: free ports, waiting on a condition, ASGI apps served in a thread, and
``rerankd`` processes (replicas, gateways) started on 127.0.0.1.

Why a module and not ``conftest.py``: pytest imports a conftest by itself, and a test that imports it as a
module gets a second copy (and breaks when another ``conftest.py`` shadows the name). Fixtures stay in
``tests/conftest.py`` and build on these helpers; tests import them as ``from support import ...`` (``tests/``
is on ``sys.path`` because it holds the root conftest and no ``__init__.py``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from rerankd.gateway.settings import GatewaySettings

if TYPE_CHECKING:
    from rerankd.server.settings import ServerSettings

__all__ = [
    "Arrivals",
    "Fleet",
    "Proc",
    "ServerThread",
    "clear_of_a_minute_boundary",
    "free_port",
    "metric_value",
    "process_env",
    "running_gateway",
    "running_server",
    "serving_in_thread",
    "spawn_gateway",
    "spawn_replica",
    "wait_until",
]


def pinned_compile() -> str:
    """The ``--compile`` test servers run unless a test asks for another: ``off``, the eager fused forward.

    ``auto`` would serve with transformers' forward first and swap the compiled kernels in mid-test, and a test
    comparing two answers of one server must not see the (rounding-sized) change between them; ``on`` compiles
    before ``/ready``, which costs every server start 20-60 s of both cores (CI's main suite took 34 min with it,
    and servers started beside a compile missed their readiness deadline). The compiled kernels are tested where
    a test names ``--compile`` (tests/unit/test_fused_forward.py, test_background_compile.py,
    tests/integration/test_compile_fallback.py, test_deterministic_scores.py)."""
    return "off"


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it; a test binds it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05) -> None:
    """Return as soon as ``condition()`` is true; fail naming ``what`` did not happen within ``timeout`` s.

    This is how a test orders events: it waits for the one it needs to have happened, never a fixed time.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def clear_of_a_minute_boundary(margin_s: float = 2.0) -> None:
    """Return once the wall clock is more than ``margin_s`` before the next whole minute (at most ~``margin_s``).

    For in-process rate limits: their windows are wall-clock minutes (the ``limits`` library's memory
    storage reads ``time.time()``, and the gateway's RateLimiter offers no other clock), and just after a
    boundary the previous minute counts slightly less, so a few requests that straddle one could see an
    extra unit of budget. The assertions stay on what the limiter answers.
    """
    wait_until(lambda: time.time() % 60 <= 60 - margin_s, margin_s + 3, "the wall clock to leave a minute's end",
               interval=0.1)


class Arrivals:
    """Counts events seen by a fake server (requests arriving, clients leaving) so a test can wait for them.

    Thread-safe: the server runs in another thread (or process-local event loop) than the test.
    """

    def __init__(self) -> None:
        self._count = 0
        self._changed = threading.Condition()

    @property
    def count(self) -> int:
        with self._changed:
            return self._count

    def arrive(self) -> None:
        with self._changed:
            self._count += 1
            self._changed.notify_all()

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> bool:
        """True once ``count`` events have happened; False if they did not within ``timeout`` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: self._count >= count, timeout)


def metric_value(url: str, name: str) -> float:
    """An unlabelled sample from ``url``'s /metrics (``rerankd_pairs_total``, ``…_count``); 0.0 when absent."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


# ------------------------------------------------------------------------------ ASGI apps in a thread


class ServerThread:
    """An ASGI ``app`` under uvicorn in a daemon thread on 127.0.0.1; :meth:`start` returns once it serves.

    ``ready()`` is an extra condition (e.g. ``/ready`` answers 200) checked after uvicorn has bound the port.
    """

    def __init__(self, app: Any, port: int | None = None, *, ready: Callable[[], bool] = lambda: True,
                 timeout: float = 15.0, what: str = "ASGI test server") -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._ready = ready
        self._timeout = timeout
        self._what = what
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on", timeout_graceful_shutdown=5))
        self._thread = threading.Thread(target=self.server.run, name=what, daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + self._timeout
        while not (self.server.started and self._ready()):
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.stop()
                raise RuntimeError(f"{self._what} did not become ready")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def serving_in_thread(app: object, port: int | None = None, ready: Callable[[], bool] = lambda: True,
                      timeout: float = 15.0, what: str = "ASGI test server") -> Iterator[str]:
    """Run an ASGI ``app`` under uvicorn in a daemon thread; yield its base URL once ``ready()`` holds."""
    with ServerThread(app, port, ready=ready, timeout=timeout, what=what) as server:
        yield server.url


@contextmanager
def running_server(settings: ServerSettings, timeout: float = 120.0) -> Iterator[str]:
    """Run ``create_server_app(settings)`` under uvicorn in a thread; yield its base URL once /ready is 200."""
    from rerankd.server.app import create_server_app

    port = free_port()
    pinned = {} if "compile" in settings.model_fields_set else {"compile": pinned_compile()}
    settings = settings.model_copy(update={"port": port, "host": "127.0.0.1", **pinned})
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/ready", headers=headers, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    with serving_in_thread(create_server_app(settings), port, ready, timeout, "server") as base:
        yield base


@contextmanager
def running_gateway(settings: GatewaySettings, timeout: float = 30.0) -> Iterator[str]:
    """Run ``create_gateway_app(settings)`` under uvicorn in a thread; yield its base URL once it serves."""
    from rerankd.gateway.app import create_gateway_app

    port = free_port()
    settings = settings.model_copy(update={"port": port, "host": "127.0.0.1"})
    with serving_in_thread(create_gateway_app(settings), port, lambda: True, timeout, "gateway") as base:
        yield base


# ---------------------------------------------------------------- processes: replicas and gateways


@dataclass
class Proc:
    """A rerankd process started by a test (``rerankd serve`` or ``rerankd gateway``) on 127.0.0.1."""

    args: list[str]
    port: int
    log_path: Path
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Proc:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen([sys.executable, "-m", "rerankd.cli", *self.args, "--port", str(self.port),
                                       "--host", "127.0.0.1"], stdout=log, stderr=subprocess.STDOUT, env=self.env)
        return self

    def wait_ready(self, timeout: float = 120.0, path: str = "/ready") -> Proc:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise RuntimeError(f"process exited with {self.popen.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.url}{path} not ready after {timeout}s: {self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.popen is None or self.popen.poll() is not None:
            return None if self.popen is None else self.popen.returncode
        self.popen.send_signal(sig)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(10)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def process_env() -> dict[str, str]:
    """The environment of a ``rerankd`` child process: this one's, with JSON logs and one OpenMP thread."""
    env = dict(os.environ)
    env.pop("CI", None)  # nothing in a child process depends on it; keeps their logs plain
    env["RERANKD_LOG_FORMAT"] = "json"
    env.setdefault("OMP_NUM_THREADS", "1")  # several replicas share two cores
    env.setdefault("RERANKD_COMPILE", pinned_compile())  # one kernel path per server (a --compile flag wins)
    # One lane: CI runs the suites side by side on two cores, where bulk passes at a lower priority would wait on
    # the other suites' processes; tests/reliability/test_hostile.py runs the default (a --bulk-nice flag wins).
    env.setdefault("RERANKD_BULK_NICE", "0")
    return env


def spawn_replica(model_dir: Path, log_dir: Path, *extra: str, port: int | None = None) -> Proc:
    """Start ``rerankd serve`` with the tiny model in float32 on the CPU (not waiting for /ready)."""
    port = port or free_port()
    args = ["serve", "--model", str(model_dir), "--served-model-name", "tiny-reranker", "--device", "cpu",
            "--dtype", "float32", "--max-model-len", "256", *extra]
    return Proc(args, port, log_dir / f"replica-{port}.log", process_env()).start()


def spawn_gateway(log_dir: Path, upstreams: list[str], *extra: str, port: int | None = None) -> Proc:
    """Start ``rerankd gateway`` in front of ``upstreams`` (not waiting for /ready)."""
    port = port or free_port()
    args = ["gateway", *[a for u in upstreams for a in ("--upstream", u)], *extra]
    return Proc(args, port, log_dir / f"gateway-{port}.log", process_env()).start()


@dataclass
class Fleet:
    """Three replicas of the tiny model; a test that kills one restarts it with :meth:`restart`."""

    model_dir: Path
    log_dir: Path
    replicas: list[Proc]

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    def restart(self, index: int, sig: int = signal.SIGKILL) -> int | None:
        """Stop replica ``index`` with ``sig``, start it again on its port, wait until ready; the old exit status."""
        old = self.replicas[index]
        status = old.stop(sig)
        self.replicas[index] = spawn_replica(self.model_dir, self.log_dir, port=old.port).wait_ready(300)
        return status

    def ensure_all_up(self) -> None:
        for i, replica in enumerate(self.replicas):
            if replica.popen is None or replica.popen.poll() is not None:
                self.restart(i)
