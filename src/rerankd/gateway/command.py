"""``rerankd gateway`` and ``rerankd keys``: the gateway process and its key administration."""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from pydantic import ValidationError

from rerankd.edge_settings import EdgeSettings
from rerankd.gateway.key_ranges import LIMIT_RANGE, PRIORITY_RANGE
from rerankd.gateway.settings import GatewayConfigError, GatewaySettings, load_yaml_config
from rerankd.options import env_option, settings_options

__all__ = ["DEFAULT_DATA_DIR", "gateway", "keys", "stack_database_url"]

_D = GatewaySettings.model_fields


def _default(name: str) -> Any:
    field = _D[name]
    return field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]


@click.command()
@env_option("--config", "config_file", envvar="RERANKD_CONFIG", type=click.Path(dir_okay=False), default=None,
            help="YAML file with any of these settings (flags and RERANKD_* variables win over it).")
@env_option("--upstream", "upstreams", multiple=True, envvar="RERANKD_UPSTREAM",
            help="Replica URL, repeatable; dns+http://NAME:PORT means every address NAME resolves to. These "
                 "replicas form one unnamed pool, the default route.")
@env_option("--pool", "pools", multiple=True, envvar="RERANKD_POOL",
            help="A named pool, repeatable: [TASK:]NAME=URL[,URL...] (TASK rerank, the default, or embed); NAME is "
                 "the public model name clients send.")
@env_option("--model-alias", "model_aliases", multiple=True, envvar="RERANKD_MODEL_ALIAS",
            help="Another public name for a pool, repeatable: ALIAS=NAME (e.g. rerank-v3.5=qwen3-reranker-4b).")
@env_option("--default-model", default=None,
            help="Pool or alias for requests without a model (and, unless --strict-model-names, with an unknown "
                 "one). "
                 "Default: the --upstream pool, else each task's first --pool.")
@env_option("--strict-model-names/--no-strict-model-names", default=_default("strict_model_names"),
            help="Strict: a model name no route matches is a 404 listing what is served. Lenient: it goes to the "
                 "default pool.")
@env_option("--host", default=_default("host"))
@env_option("--port", type=click.IntRange(0, 65535), default=_default("port"))
@env_option("--database-url", default=_default("database_url"),
            help="Keys and usage ledger: sqlite:///PATH or postgresql://USER@HOST/DB.")
@env_option("--redis-url", default=None, help="redis://HOST:PORT/DB to share rate limits across gateways.")
@env_option("--admin-key", default=None, show_default=False, help="Bootstrap admin credential for /admin/*.")
@env_option("--upstream-api-key", default=None, show_default=False, help="Bearer key the replicas require.")
@env_option("--metrics-token", default=_default("metrics_token"), show_default=False,
            help="Bearer token GET /metrics then requires (16+ characters); only with it are per-key series "
                 "(API key names) exported. Without it /metrics stays open and shows all keys as one total.")
@env_option("--jwt-jwks-url", default=None, help="Accept JWTs signed by keys from this JWKS URL.")
@env_option("--jwt-secret", default=None, show_default=False, help="Accept HS256 JWTs signed with this secret.")
@env_option("--jwt-issuer", default=None, help="Required `iss` of JWTs.")
@env_option("--jwt-audience", default=None, help="Required `aud` of JWTs.")
@env_option("--jwt-algorithm", "jwt_algorithms", multiple=True, envvar="RERANKD_JWT_ALGORITHM",
            help="Allowed JWT algorithm, repeatable (default RS256+ES256 for JWKS, HS256 for a secret).")
@env_option("--jwt-rpm", type=click.IntRange(min=1), default=None, help="Requests/min per JWT subject.")
@env_option("--jwt-tpm", type=click.IntRange(min=1), default=None, help="Tokens/min per JWT subject.")
@env_option("--jwt-max-lifetime", type=click.FloatRange(min=1), default=_default("jwt_max_lifetime"),
            help="Longest JWT lifetime accepted in seconds (exp - now, and exp - iat): no near-eternal tokens.")
@env_option("--jwt-max-token-bytes", type=click.IntRange(min=256), default=_default("jwt_max_token_bytes"),
            help="Longest JWT accepted; longer ones are refused before any parsing.")
@env_option("--jwt-max-jwks-bytes", type=click.IntRange(min=1024), default=_default("jwt_max_jwks_bytes"),
            help="Largest JWKS document read from --jwt-jwks-url.")
@env_option("--jwt-max-jwks-keys", type=click.IntRange(min=1), default=_default("jwt_max_jwks_keys"),
            help="Most keys a JWKS document may hold.")
@env_option("--jwt-allow-http-jwks/--jwt-require-https-jwks", default=_default("jwt_allow_http_jwks"),
            help="Accept a plain-http --jwt-jwks-url (keys fetched without TLS can be swapped on the way).")
@env_option("--ratelimit-fail-open/--ratelimit-fail-closed", default=True,
            help="When Redis is unreachable: serve without limits (open) or answer 429 (closed).")
@env_option("--upstream-max-model-len", type=click.IntRange(min=1), default=_default("upstream_max_model_len"),
            help="The replicas' --max-model-len; caps each document's share of the tokens/min estimate.")
@env_option("--split-threshold", type=click.IntRange(min=1), default=_default("split_threshold"),
            help="Requests with more documents (embedding requests: inputs) are split across replicas.")
@env_option("--max-documents", type=click.IntRange(min=1), default=_default("max_documents"))
@env_option("--max-body-bytes", type=click.IntRange(min=1024), default=_default("max_body_bytes"))
@env_option("--max-upstream-answer-bytes", type=click.IntRange(min=1024), default=_default("max_upstream_answer_bytes"),
            help="Largest answer read from a replica; a longer one is abandoned and answered 502. Keep it above "
                 "--max-body-bytes: an answer with return_documents echoes the request's texts.")
@env_option("--body-timeout", type=click.FloatRange(min=0.1), default=_default("body_timeout"),
            help="Seconds a client may stall while sending its body before a 408 (slowloris guard).")
@settings_options(GatewaySettings, [*EdgeSettings.model_fields, "max_concurrent_requests", "max_request_chars",
                                    "otlp_endpoint"])
@env_option("--attempt-timeout", type=click.FloatRange(min=0.001), default=_default("attempt_timeout"),
            help="Seconds one attempt at one replica may take.")
@env_option("--total-timeout", type=click.FloatRange(min=0.001), default=_default("total_timeout"),
            help="Seconds a request may take over all its attempts.")
@env_option("--max-attempts", type=click.IntRange(min=1), default=_default("max_attempts"))
@env_option("--health-interval", type=click.FloatRange(min=0.05), default=_default("health_interval"))
@env_option("--upstream-ready-path", default=_default("upstream_ready_path"),
            help="Path polled on every replica for readiness (use /health for a plain `vllm serve`).")
@env_option("--drain-seconds", type=click.FloatRange(min=0), default=_default("drain_seconds"),
            help="On SIGTERM, how long in-flight requests may finish.")
@env_option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@env_option("--log-format", type=click.Choice(["auto", "json", "text"]), default="auto")
@env_option("--log-file", default=None, help="Also write logs to this file, rotated at 50 MB.")
@click.pass_context
def gateway(ctx: click.Context, /, config_file: str | None, log_format: str, log_file: str | None,
            **flags: Any) -> None:
    """Serve the rerank API in front of many replicas: keys, limits, failover, usage ledger."""
    from rerankd.gateway.app import create_gateway_app
    from rerankd.http.serving import run_until_stopped, uvicorn_config
    from rerankd.observability import tracing
    from rerankd.observability.logging import configure_logging

    configure_logging(flags["log_level"], log_format, log_file)
    try:
        settings = _settings(ctx, config_file, flags)
        if settings.otlp_endpoint:  # before the app is built: its middleware is chosen then
            tracing.configure_process(settings.otlp_endpoint, "rerankd-gateway", settings.port)
        app = create_gateway_app(settings)
    except (GatewayConfigError, ValueError, tracing.TracingUnavailableError) as exc:
        raise click.UsageError(str(exc)) from None
    named = [p.name for p in settings.pools]
    click.echo(f"rerankd gateway: {len(settings.upstreams) + sum(len(p.upstreams) for p in settings.pools)} "
               f"upstream(s){'; models ' + ', '.join(named) if named else ''}; listening on "
               f"http://{settings.host}:{settings.port}", err=True)
    try:
        run_until_stopped(uvicorn_config(app, host=settings.host, port=settings.port, limits=settings,
                                         log_level=settings.log_level, access_log=False,
                                         timeout_graceful_shutdown=int(settings.drain_seconds)))
    finally:
        tracing.shutdown()  # the spans of the last requests (and of the final ledger flush) are sent


def _settings(ctx: click.Context, config_file: str | None, flags: dict[str, Any]) -> GatewaySettings:
    """Merge defaults < YAML < environment < flags (click reports where each value came from)."""
    merged: dict[str, Any] = load_yaml_config(config_file) if config_file else {}
    for name, value in flags.items():
        source = ctx.get_parameter_source(name)
        if source in (ParameterSource.DEFAULT, None) and name in merged:
            continue
        if isinstance(value, tuple):
            if not value and name in merged:
                continue
            value = list(value)
        if value is None and name in merged:
            continue
        merged[name] = value
    merged = {k: v for k, v in merged.items() if v is not None or _default(k) is None}
    try:
        return GatewaySettings(**merged)
    except ValidationError as exc:  # one line naming the setting, not pydantic's report
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise GatewayConfigError(f"{where}: {str(first['msg']).removeprefix('Value error, ')}") from None


@click.group()
def keys() -> None:
    """Create, list and revoke gateway API keys (in the gateway's database)."""


DEFAULT_DATA_DIR = Path("rerankd-data")  # `rerankd up --data-dir`'s default; its database is DATA_DIR/gateway.db


def stack_database_url(data_dir: Path) -> str:
    """The database of the `rerankd up` stack whose state is in ``data_dir``."""
    return f"sqlite:///{data_dir.resolve() / 'gateway.db'}"


def _database(func: Any) -> Any:
    """``--database-url`` and ``--data-dir``: which gateway database a ``rerankd keys`` command works on."""
    func = env_option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                      show_default=False,
                      help=f"A `rerankd up` stack's --data-dir: use its DATA_DIR/gateway.db (default "
                           f"{DEFAULT_DATA_DIR}/ when that database exists and --database-url is not given).")(func)
    return env_option("--database-url", default=None, show_default=False,
                      help=f"The gateway's database: sqlite:///PATH or postgresql://USER@HOST/DB (default "
                           f"{_default('database_url')}).")(func)


def _resolve_database(database_url: str | None, data_dir: Path | None) -> str:
    """``--database-url`` wins, then ``--data-dir``; without either, the `rerankd up` stack of this directory
    (``./rerankd-data/gateway.db``) when there is one and no gateway database of its own, else the gateway's
    default. Two candidates and no choice is an error naming both."""
    if database_url is not None and data_dir is not None:
        raise click.UsageError("give --database-url or --data-dir, not both")
    if database_url is not None:
        return database_url
    if data_dir is not None:
        if not (data_dir / "gateway.db").exists():
            raise click.UsageError(f"no gateway database in --data-dir {data_dir} ({data_dir / 'gateway.db'} "
                                   "does not exist): give the --data-dir `rerankd up` was started with")
        return stack_database_url(data_dir)
    default = str(_default("database_url"))
    stack = DEFAULT_DATA_DIR / "gateway.db"
    own = Path(default.removeprefix("sqlite:///"))
    if stack.exists() and own.exists():
        raise click.UsageError(f"two gateway databases here: {stack} (`rerankd up`) and {own} (`rerankd "
                               f"gateway`); pick one with --data-dir {DEFAULT_DATA_DIR} or --database-url {default}")
    return stack_database_url(DEFAULT_DATA_DIR) if stack.exists() else default


def _shown_url(url: str) -> str:
    """The database for a message, without a password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is reported by the engine factory, with a better message
        return "the database"


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except OSError as exc:
        raise click.ClickException(f"cannot reach the database: {exc}") from None


async def _store(database_url: str) -> Any:
    from rerankd.gateway.db import create_engine_for, init_schema
    from rerankd.gateway.keys import KeyStore

    try:
        engine = create_engine_for(database_url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--database-url") from None
    await init_schema(engine)
    return engine, KeyStore(engine)


async def _audit(engine: Any, action: str, target: str) -> None:
    from rerankd.gateway.db import record_audit

    await record_audit(engine, f"cli:{getpass.getuser()}", action, target)


@keys.command("create")
@click.option("--name", required=True, help="Unique name; appears in logs, metrics and usage.")
@click.option("--rpm", type=click.IntRange(*LIMIT_RANGE), default=None, help="Requests per minute (default unlimited).")
@click.option("--tpm", type=click.IntRange(*LIMIT_RANGE), default=None, help="Tokens per minute (default unlimited).")
@click.option("--priority", type=click.IntRange(*PRIORITY_RANGE), default=None,
              help="Default `priority` of the key's requests (lower is served earlier); a request may ask for a "
                   "higher number, never a lower one. Default: none.")
@click.option("--admin", is_flag=True, help="The key may call /admin/*.")
@click.option("--json", "as_json", is_flag=True, help="Print the key and its record as JSON.")
@_database
def create_key(name: str, rpm: int | None, tpm: int | None, priority: int | None, admin: bool, as_json: bool,
               database_url: str | None, data_dir: Path | None) -> None:
    """Create a key and print it once: it is stored hashed and cannot be shown again."""
    url = _resolve_database(database_url, data_dir)

    async def run() -> tuple[Any, str]:
        engine, store = await _store(url)
        try:
            record, plaintext = await store.create(name, rpm, tpm, is_admin=admin, priority=priority)
            await _audit(engine, "key.create", record.name)
            return record, plaintext
        finally:
            await engine.dispose()

    try:
        record, plaintext = _run(run())
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps({"id": record.id, "name": record.name, "key": plaintext, "rpm": record.rpm,
                               "tpm": record.tpm, "priority": record.priority, "admin": record.is_admin}))
        return
    click.echo(plaintext)
    shown_priority = "" if record.priority is None else f", priority {record.priority}"
    click.echo(f"created key {record.name!r} (id {record.id}, rpm {record.rpm or 'unlimited'}, "
               f"tpm {record.tpm or 'unlimited'}{shown_priority}{', admin' if admin else ''}) in {_shown_url(url)}; "
               "store it now, it is not shown again", err=True)


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines.")
@_database
def list_keys(as_json: bool, database_url: str | None, data_dir: Path | None) -> None:
    """List keys (name, prefix, limits, priority, state); never the keys themselves."""
    url = _resolve_database(database_url, data_dir)

    async def run() -> list[Any]:
        engine, store = await _store(url)
        try:
            return await store.list()
        finally:
            await engine.dispose()

    records = _run(run())
    if as_json:
        for r in records:
            click.echo(json.dumps({"id": r.id, "name": r.name, "key_prefix": r.key_prefix, "rpm": r.rpm,
                                   "tpm": r.tpm, "priority": r.priority, "admin": r.is_admin,
                                   "created_at": r.created_at.isoformat(),
                                   "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None}))
        return
    click.echo(f"{'NAME':24} {'PREFIX':10} {'RPM':>8} {'TPM':>10} {'PRIORITY':>8} {'ADMIN':5} {'STATE':8} ID")
    for r in records:
        priority = "-" if r.priority is None else r.priority
        click.echo(f"{r.name:24} {r.key_prefix:10} {r.rpm or '-':>8} {r.tpm or '-':>10} {priority:>8} "
                   f"{'yes' if r.is_admin else 'no':5} {'revoked' if r.revoked else 'active':8} {r.id}")


@keys.command("revoke")
@click.argument("name_or_id")
@_database
def revoke_key(name_or_id: str, database_url: str | None, data_dir: Path | None) -> None:
    """Revoke a key by name or id (running gateways refuse it within --key-cache-seconds)."""
    url = _resolve_database(database_url, data_dir)

    async def run() -> bool:
        engine, store = await _store(url)
        try:
            done = await store.revoke(name_or_id)
            if done:
                await _audit(engine, "key.revoke", name_or_id)
            return done
        finally:
            await engine.dispose()

    if not _run(run()):
        click.echo(f"error: no active key named or with id {name_or_id!r}", err=True)
        sys.exit(1)
    click.echo(f"revoked {name_or_id}", err=True)
