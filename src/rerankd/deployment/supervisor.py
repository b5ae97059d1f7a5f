"""Keeping a handful of child processes alive: start, restart with backoff, stop them all cleanly.

Why not systemd/supervisord: ``rerankd up`` must work from a plain ``pip install`` on a laptop or one GPU box.
This supervisor is deliberately small: each :class:`Child` is one command line with its log file; a child that
exits is restarted after a delay that doubles on each quick death (1 s … 30 s) and resets once it has run
for a minute. Children get ``PR_SET_PDEATHSIG`` on Linux, so even a SIGKILLed ``rerankd up`` leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Child", "Supervisor"]

log = logging.getLogger("rerankd.up")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Ask Linux to SIGTERM this child when its parent dies (no orphans after a SIGKILL of `rerankd up`)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(eq=False)
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    next_delay: float = 1.0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.popen = subprocess.Popen(
                self.argv, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def exited(self) -> int | None:
        """The exit status once the process has ended, else None."""
        return None if self.popen is None else self.popen.poll()


class Supervisor:
    """Starts children, restarts the ones that die, and stops them all on request."""

    def __init__(self, children: list[Child], *, max_delay: float = 30.0, healthy_after: float = 60.0,
                 poll_interval: float = 0.5) -> None:
        self.children = children
        self.max_delay = max_delay
        self.healthy_after = healthy_after
        self.poll_interval = poll_interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        for child in self.children:
            child.start()
            log.info("started %s (pid %s), log %s", child.name, child.pid, child.log_path)
        self._thread = threading.Thread(target=self._watch, name="rerankd-up-supervisor", daemon=True)
        self._thread.start()

    def stop(self, grace: float = 40.0) -> None:
        """SIGTERM every child (reverse start order: UI, gateway, then servers), SIGKILL what outlives ``grace``."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
        alive = [c for c in reversed(self.children) if c.popen is not None and c.exited() is None]
        for child in alive:
            child.popen.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        deadline = time.monotonic() + grace
        for child in alive:
            try:
                child.popen.wait(max(0.1, deadline - time.monotonic()))  # type: ignore[union-attr]
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs; killing it", child.name, grace)
                child.popen.kill()  # type: ignore[union-attr]
                child.popen.wait(10)  # type: ignore[union-attr]

    def _watch(self) -> None:
        due: dict[str, float] = {}
        while not self._stopping.wait(self.poll_interval):
            now = time.monotonic()
            for child in self.children:
                status = child.exited()
                if status is None:
                    if now - child.started_at >= self.healthy_after:
                        child.next_delay = 1.0  # it has been fine for a while: forget earlier crashes
                    continue
                if child.name not in due:
                    due[child.name] = now + child.next_delay
                    log.warning("%s exited with status %s; restarting in %.0fs (see %s)",
                                child.name, status, child.next_delay, child.log_path)
                    child.next_delay = min(child.next_delay * 2, self.max_delay)
                elif now >= due[child.name]:
                    del due[child.name]
                    if self._stopping.is_set():
                        return
                    child.restarts += 1
                    child.start()
                    log.info("restarted %s (pid %s, restart #%d)", child.name, child.pid, child.restarts)
