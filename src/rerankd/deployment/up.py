"""``rerankd up``: the whole stack on one machine — N inference replicas, the gateway and the UI.

Embedded defaults: SQLite ledger and in-process rate limiter, everything on 127.0.0.1 unless ``--host``.
State lives in ``--data-dir``: the ledger database, the generated admin key and first API key (files of
mode 0600, so a second ``up`` prints the same key instead of minting a new one), and one log file per child.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import httpx

from rerankd.deployment.supervisor import Child, Supervisor
from rerankd.engine.config import EngineConfig
from rerankd.gateway.command import DEFAULT_DATA_DIR, stack_database_url
from rerankd.options import env_option, settings_argv, settings_options
from rerankd.server.settings import ServerSettings

__all__ = ["BANNER_LAST_LABEL", "read_banner", "up"]

log = logging.getLogger("rerankd.up")

_FIRST_KEY_NAME = "default"
BANNER_LAST_LABEL = "try"
"""The banner's last ``label: value`` line: ``up`` prints it once every replica, the gateway and the UI answer."""

# The serve flags `up` takes and hands to every replica: the name and every engine setting (a new engine
# setting is forwarded without a change here). --model and --host are up's own: each replica gets the
# resolved model directory and listens on 127.0.0.1.
REPLICA_SETTINGS = ("served_model_name", *(name for name in EngineConfig.model_fields if name != "model"))


def _secret_file(path: Path, make: Any) -> str:
    """Read a secret kept in ``path``, or create it with ``make()`` (mode 0600)."""
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")
    return value


def _first_api_key(database_url: str, key_file: Path) -> str:
    """The first user key: created once (named ``default``), kept in ``key_file`` so restarts reuse it."""
    if key_file.exists():
        return key_file.read_text(encoding="utf-8").strip()

    async def create() -> str:
        from rerankd.gateway.db import create_engine_for, init_schema
        from rerankd.gateway.keys import KeyStore

        engine = create_engine_for(database_url)
        try:
            await init_schema(engine)
            store = KeyStore(engine)
            name = _FIRST_KEY_NAME
            if any(k.name == name for k in await store.list()):  # key file lost: mint a fresh one
                name = f"{_FIRST_KEY_NAME}-{int(time.time())}"
            _, plaintext = await store.create(name)
            return plaintext
        finally:
            await engine.dispose()

    return _secret_file(key_file, lambda: asyncio.run(create()))


class _Pool:
    """The replicas of one model in the stack: their processes, URLs and the gateway's ``--pool`` value."""

    def __init__(self, task: str, names: Sequence[str], model_path: Path, replicas: int, base_port: int,
                 serve_extra: list[str], python: list[str], logs: Path, env: dict[str, str], first: int = 1) -> None:
        ports = [base_port + i for i in range(replicas)]  # replica 1 on the base port
        self.urls = [f"http://127.0.0.1:{port}" for port in ports]
        # The first served name names the pool; the others are its aliases at the gateway, so a client may use
        # any of them there as it could on a replica.
        self.flag = f"{task}:{names[0]}={','.join(self.urls)}"
        self.alias_flags = [a for alias in names[1:] for a in ("--model-alias", f"{alias}={names[0]}")]
        served = [a for n in names for a in ("--served-model-name", n)]
        self.children = [
            Child(f"server-{first + i}", [*python, "serve", "--model", str(model_path), *served,
                                      "--host", "127.0.0.1", "--port", str(port), *serve_extra],
                  logs / f"server-{first + i}.log", env)
            for i, port in enumerate(ports)]


def stop_on_signals(stop: threading.Event) -> Callable[[int, Any], None]:
    """Make SIGTERM and SIGINT set ``stop``; return the handler.

    Why the handler hands ``stop.set()`` to a thread: a Python signal handler runs in the main thread between
    two bytecodes, possibly while that thread holds ``stop``'s internal, non-reentrant lock (inside
    ``stop.wait()``, or inside an earlier handler's ``stop.set()``). Setting the event right there waits for a
    lock its own thread holds: forever. A second Ctrl-C, or ``timeout`` forwarding a signal the process had
    already got, hung ``rerankd up`` that way with every child still running.
    """
    def on_signal(_signum: int, _frame: Any) -> None:
        if not stop.is_set():
            threading.Thread(target=stop.set, name="rerankd-up-stop", daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return on_signal


def _wait_ready(children: list[tuple[Child, str]], timeout: float, stop: threading.Event) -> bool:
    """Poll each child's readiness URL, printing progress as each turns ready; False on timeout/stop."""
    pending = dict(children)
    started = time.monotonic()
    last_note = 0.0
    with httpx.Client(timeout=2, trust_env=False) as client:
        while pending and not stop.is_set():
            for child, url in list(pending.items()):
                try:
                    if client.get(url).status_code == 200:
                        click.echo(f"  ✓ {child.name} ready after {time.monotonic() - started:.0f}s", err=True)
                        del pending[child]
                except httpx.HTTPError:
                    pass
            elapsed = time.monotonic() - started
            if pending and elapsed - last_note >= 10:
                last_note = elapsed
                names = ", ".join(c.name for c in pending)
                click.echo(f"  … waiting for {names} ({elapsed:.0f}s; logs in {next(iter(pending)).log_path.parent})",
                           err=True)
            if elapsed > timeout:
                return False
            stop.wait(0.25)
    return not pending


def _wait_pools(gateway_url: str, timeout: float, stop: threading.Event) -> bool:
    """Wait until the gateway counts every replica of every pool healthy: its ``/ready`` is 200 once any one is,
    and its probes may not have seen a pool's replicas yet (an embedding request would be a 503 meanwhile)."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2, trust_env=False) as client:
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                pools = client.get(f"{gateway_url}/info").json().get("models", [])
                if pools and all(p["healthy_replicas"] == p["replicas"] for p in pools):
                    return True
            except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError):
                pass
            stop.wait(0.25)
    return False


@click.command()
@env_option("--model", required=True, help="Hugging Face id or local directory, served by every replica.")
@env_option("--replicas", type=click.IntRange(min=1), default=1, help="Inference servers to start.")
@env_option("--host", default="127.0.0.1", help="Interface for the gateway and the UI.")
@env_option("--gateway-port", type=click.IntRange(1, 65535), default=8080)
@env_option("--ui-port", type=click.IntRange(1, 65535), default=7860)
@env_option("--ui/--no-ui", "with_ui", default=True, help="Start the web UI too.")
@env_option("--server-base-port", type=click.IntRange(1, 65535), default=8001,
            help="Replica 1 listens on this port, replica N on base + N - 1, on 127.0.0.1 only (the gateway is "
                 "the way in).")
@env_option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_DATA_DIR,
            help="Ledger database, generated keys and logs (`rerankd keys --data-dir DIR` works on its keys).")
@settings_options(ServerSettings, REPLICA_SETTINGS)
@env_option("--embedding-model", default=None,
            help="Also serve this embedding model (Hugging Face id or local directory), in a pool of its own beside "
                 "the reranker's, behind the same gateway and key.")
@env_option("--embedding-replicas", type=click.IntRange(min=1), default=1,
            help="Inference servers for --embedding-model (on the ports after the reranker's).")
@env_option("--otlp-endpoint", default=None,
            help="OTLP/HTTP collector (e.g. http://127.0.0.1:4318) every replica and the gateway send traces to, "
                 "as their own --otlp-endpoint; off by default.")
@env_option("--ready-timeout", type=click.FloatRange(min=1), default=1800.0,
            help="Seconds to wait for every part to be ready before giving up.")
def up(model: str, replicas: int, host: str, gateway_port: int, ui_port: int, with_ui: bool,
       server_base_port: int, data_dir: Path, ready_timeout: float, embedding_model: str | None,
       embedding_replicas: int, otlp_endpoint: str | None, **server_flags: Any) -> None:
    """Start servers + gateway + UI on this machine; Ctrl-C stops them all."""
    from rerankd.engine.model_source import ModelSourceError, resolve_model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s up: %(message)s", datefmt="%H:%M:%S")
    for chatty in ("alembic", "httpx", "httpcore"):  # readiness polling would print a line every 250 ms
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        # Download once here, not N times in parallel in the replicas (which get the directory: --revision is
        # the reranker's; an --embedding-model id loads its main branch).
        model_path = resolve_model(model, revision=server_flags.get("revision"))
        embedding_path = resolve_model(embedding_model) if embedding_model else None
    except ModelSourceError as exc:
        raise click.ClickException(str(exc)) from None
    data_dir = data_dir.resolve()
    logs = data_dir / "logs"
    database_url = stack_database_url(data_dir)
    admin_key = _secret_file(data_dir / "admin-key", lambda: "adm-" + secrets.token_urlsafe(24))
    api_key = _first_api_key(database_url, data_dir / "api-key")
    # The replicas listen on 127.0.0.1 beside the gateway: a local process must not bypass the gateway's keys,
    # limits and ledger, and only a replica with --api-key trusts the gateway's per-tenant batching header.
    replica_key = _secret_file(data_dir / "replica-key", lambda: "rep-" + secrets.token_urlsafe(24))

    python = [sys.executable, "-m", "rerankd.cli"]
    env = {**os.environ, "RERANKD_LOG_FORMAT": "json"}
    for secret in ("RERANKD_API_KEY", "RERANKD_ADMIN_KEY"):  # never leak a parent's credentials to children
        env.pop(secret, None)
    replica = ServerSettings(model=model, **server_flags)
    name = replica.model_name
    serve_extra = settings_argv(replica, [n for n in REPLICA_SETTINGS if n != "served_model_name"])
    tracing = ["--otlp-endpoint", otlp_endpoint] if otlp_endpoint else []
    serve_extra = [*serve_extra, *tracing]
    # One pool per model the stack serves, each a named pool of the gateway's model table; the embedding
    # pool's replicas listen on the ports after the reranker's and get the same engine flags.
    replica_env = {**env, "RERANKD_API_KEY": replica_key}
    pools = [_Pool("rerank", replica.served_model_names, model_path, replicas, server_base_port, serve_extra,
                   python, logs, replica_env)]
    if embedding_model is not None and embedding_path is not None:
        embedding_name = embedding_model.rstrip("/").split("/")[-1]  # as `serve` names it
        if embedding_name in replica.served_model_names:
            raise click.ClickException(f"--embedding-model {embedding_model!r} has the reranker's name {name!r}; "
                                       "give the reranker another with --served-model-name")
        pools.append(_Pool("embed", [embedding_name], embedding_path, embedding_replicas, server_base_port + replicas,
                           serve_extra, python, logs, replica_env, first=replicas + 1))
    servers = [child for pool in pools for child in pool.children]
    server_urls = [url for pool in pools for url in pool.urls]
    gateway = Child("gateway", [*python, "gateway", *[a for pool in pools for a in ("--pool", pool.flag)],
                                *[a for pool in pools for a in pool.alias_flags],
                                "--host", host, "--port", str(gateway_port), "--database-url", database_url,
                                *tracing],
                    logs / "gateway.log",
                    {**env, "RERANKD_ADMIN_KEY": admin_key, "RERANKD_UPSTREAM_API_KEY": replica_key})
    local = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    gateway_url = f"http://{local}:{gateway_port}"
    children = [*servers, gateway]
    readiness = [(s, f"{u}/ready") for s, u in zip(servers, server_urls, strict=True)]
    readiness.append((gateway, f"{gateway_url}/ready"))
    ui_url = None
    if with_ui:
        ui = Child("ui", [*python, "ui", "--gateway-url", gateway_url, "--host", host, "--port", str(ui_port)],
                   logs / "ui.log", {**env, "RERANKD_API_KEY": api_key})
        children.append(ui)
        ui_url = f"http://{local}:{ui_port}"
        readiness.append((ui, ui_url + "/"))

    supervisor = Supervisor(children)
    stop = threading.Event()
    stop_on_signals(stop)
    served = " and ".join(f"{len(p.urls)} replica(s) of {p.flag.split('=')[0]}" for p in pools)
    click.echo(f"rerankd up: {served}, gateway, {'UI' if with_ui else 'no UI'}; "
               f"logs in {logs}", err=True)
    supervisor.start()
    try:
        if not _wait_ready(readiness, ready_timeout, stop) or not _wait_pools(gateway_url, 60, stop):
            if not stop.is_set():
                raise click.ClickException(f"not everything was ready after {ready_timeout:.0f}s; see {logs}")
            return
        click.echo("")
        routes = "POST /v1/rerank, POST /v1/embeddings" if embedding_model else "POST /v1/rerank"
        click.echo(f"gateway:   {gateway_url}   ({routes}, GET /metrics)")
        if ui_url:
            click.echo(f"web UI:    {ui_url}")
        for i, url in enumerate(server_urls):
            click.echo(f"replica {i + 1}: {url}")
        click.echo(f"API key:   {api_key}")
        click.echo(f"admin key: {admin_key}   (also in {data_dir / 'admin-key'})")
        click.echo(f"more keys: rerankd keys create --name NAME --data-dir {shlex.quote(str(data_dir))}")
        click.echo(f"{BANNER_LAST_LABEL}:       curl -s {gateway_url}/v1/rerank -H 'Authorization: Bearer {api_key}' "
                   "-d '{\"query\": \"capital of France\", \"documents\": [\"Paris\", \"Berlin\"]}'")
        click.echo("Ctrl-C stops everything.", err=True)
        sys.stdout.flush()
        stop.wait()
    finally:
        click.echo("rerankd up: stopping…", err=True)
        supervisor.stop()
        click.echo("rerankd up: all stopped", err=True)


def read_banner(proc: subprocess.Popen[str], timeout: float,
                whole: dict[str, str] | None = None) -> dict[str, str]:
    """What a running ``rerankd up`` printed once ready: each banner line's label → the first word of its value
    (the URL, the key), read from ``proc``'s stdout up to the ``try:`` line. ``whole`` gets each line's whole
    value. For scripts and tests that start ``up`` and need its addresses and key; raises ``RuntimeError`` if
    ``up`` exits first or prints no ``try:`` line within ``timeout`` seconds (checked between lines)."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None, "start rerankd up with stdout=subprocess.PIPE, text=True"
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"rerankd up exited with {proc.returncode} before it was ready")
            continue
        label, _, value = line.partition(":")
        if value.strip():
            seen[label.strip()] = value.strip().split()[0]
            if whole is not None:
                whole[label.strip()] = value.strip()
        if label == BANNER_LAST_LABEL:
            return seen
    raise RuntimeError(f"rerankd up printed no `{BANNER_LAST_LABEL}:` line within {timeout:g} s; saw {seen}")
