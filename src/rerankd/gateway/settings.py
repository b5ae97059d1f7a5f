"""Everything ``rerankd gateway`` can be told, from flags, ``RERANKD_*`` variables and a YAML file.

Why one object: the CLI, the YAML loader, ``rerankd up`` and the tests all build the same
:class:`GatewaySettings`, and the app reads nothing else. Precedence is flag > environment > YAML >
default, the order operators expect from every other tool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator

from rerankd.edge_settings import DEFAULT_MAX_REQUEST_CHARS, EdgeSettings
from rerankd.engine.model_source import DEFAULT_MAX_MODEL_LEN
from rerankd.gateway.model_table import PoolSettings, check_table, parse_alias, parse_pool
from rerankd.gateway.rollout import RolloutSettings, check_rollouts
from rerankd.observability.tracing_settings import TracingSettings

__all__ = ["GatewayConfigError", "GatewaySettings", "load_yaml_config"]


_MIN_TOKEN_CHARS = 16


class GatewayConfigError(ValueError):
    """The configuration cannot run; the message names the setting to fix."""


class GatewaySettings(EdgeSettings, TracingSettings):
    """The gateway's configuration. Field names are the long flags in snake case; the connection limits
    are :class:`~rerankd.edge_settings.EdgeSettings`' fields, shared with ``rerankd serve``."""

    model_config = ConfigDict(extra="forbid")

    upstreams: list[str] = Field(
        default_factory=list,
        description="Replica base URLs (http://host:port) or dns+http://name:port for every address of a name.",
    )
    pools: list[PoolSettings] = Field(
        default_factory=list,
        description="Named upstream pools, one model each: [TASK:]NAME=URL[,URL...] (the model table).")
    model_aliases: dict[str, str] = Field(
        default_factory=dict, description="More public names for a pool: ALIAS=MODEL (e.g. rerank-v3.5=...).")
    default_model: str | None = Field(
        None, description="The pool (or alias) a request without a model, or with an unknown one, goes to.")
    strict_model_names: bool = Field(
        False, description="Answer 404 (listing what is served) for a model name no route matches, instead of "
                           "sending it to the default pool.")
    rollouts: list[RolloutSettings] = Field(
        default_factory=list,
        description="Canary weights and a shadow pool per model (YAML only: `rollouts:`; see docs/gateway.md).")
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str = Field("sqlite:///rerankd-gateway.db", repr=False,
                              description="Usage ledger and keys: sqlite:///PATH or postgresql://USER@HOST/DB.")
    redis_url: str | None = Field(None, repr=False, description="Share rate-limit counters across gateways.")
    admin_key: str | None = Field(None, repr=False, description="Bootstrap admin credential for /admin/*.")
    upstream_api_key: str | None = Field(None, repr=False, description="Bearer key the replicas require.")
    metrics_token: str | None = Field(
        None, repr=False,
        description="Bearer token /metrics requires; only then does it list per-key series (tenant names).")
    # JWT bearer tokens
    jwt_jwks_url: str | None = None
    jwt_secret: str | None = Field(None, repr=False)
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwt_algorithms: list[str] = Field(default_factory=list)
    jwt_rpm: int | None = Field(None, ge=1, description="Requests/min for each JWT subject (default unlimited).")
    jwt_tpm: int | None = Field(None, ge=1, description="Tokens/min for each JWT subject (default unlimited).")
    jwt_max_lifetime: float = Field(24 * 3600.0, gt=0,
                                    description="Longest JWT lifetime accepted, seconds (exp - now and exp - iat).")
    jwt_max_token_bytes: int = Field(8192, ge=256, description="Longest JWT accepted, bytes.")
    jwt_max_jwks_bytes: int = Field(1024 * 1024, ge=1024, description="Largest JWKS document read, bytes.")
    jwt_max_jwks_keys: int = Field(100, ge=1, description="Most keys a JWKS document may hold.")
    jwt_allow_http_jwks: bool = Field(False, description="Accept a plain-http JWKS URL (a loopback sidecar, tests).")
    # Limits
    ratelimit_fail_open: bool = True
    upstream_max_model_len: int = Field(
        DEFAULT_MAX_MODEL_LEN, ge=1,
        description="The replicas' --max-model-len (theirs by default): caps each document's tokens/min estimate.")
    key_cache_seconds: float = Field(5.0, ge=0, description="How long a verified key is trusted without the DB.")
    max_documents: int = Field(1000, ge=1)
    max_request_chars: int = Field(
        DEFAULT_MAX_REQUEST_CHARS, ge=1,
        description="Characters of query, instruction and documents one request may send (413 past it, checked "
                    "before validation, after authentication; counts against the key's requests/min).")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    body_timeout: float = Field(30.0, gt=0, description="Seconds a client may stall mid-body before a 408.")
    max_concurrent_requests: int = Field(
        1024, ge=1, description="Requests in flight at once; more get 503 with Retry-After (/health, /ready, "
                                "/metrics exempt).")
    # Upstream behaviour
    max_upstream_answer_bytes: int = Field(
        64 * 1024 * 1024, ge=1024,
        description="Largest answer read from a replica (bytes); a longer one is a 502. An answer echoing "
                    "documents (return_documents) is about the request's size, so keep it above --max-body-bytes.")
    split_threshold: int = Field(64, ge=1, description="Split requests with more documents across replicas.")
    attempt_timeout: float = Field(60.0, gt=0, description="Seconds one attempt at one replica may take.")
    total_timeout: float = Field(120.0, gt=0, description="Seconds a request may take over all its attempts.")
    max_attempts: int = Field(3, ge=1, description="Attempts per request (or per split part), first included.")
    retry_budget_ratio: float = Field(0.2, ge=0, description="Retries allowed per request over the last 10 s.")
    retry_budget_min_per_second: float = Field(10.0, ge=0)
    health_interval: float = Field(2.0, gt=0)
    health_timeout: float = Field(1.0, gt=0)
    upstream_ready_path: str = Field("/ready", pattern=r"^/",
                                     description="Readiness path of the replicas (/health for a plain vLLM).")
    breaker_failures: int = Field(5, ge=1, description="Consecutive failures that eject a replica.")
    breaker_error_ratio: float = Field(0.5, gt=0, le=1)
    breaker_open_seconds: float = Field(5.0, gt=0)
    drain_seconds: float = Field(30.0, ge=0, description="On SIGTERM, how long in-flight requests may finish.")
    log_level: str = "info"

    @field_validator("upstreams")
    @classmethod
    def _strip(cls, value: list[str]) -> list[str]:
        return [u.strip().rstrip("/") for u in value if u.strip()]

    @field_validator("pools", mode="before")
    @classmethod
    def _parse_pools(cls, value: Any) -> Any:
        """``--pool`` strings (``[TASK:]NAME=URL[,URL]``) and YAML mappings alike (``served-model`` =
        ``served_model``)."""
        if isinstance(value, (str, dict)):
            value = [value]
        if isinstance(value, (list, tuple)):
            return [parse_pool(v) if isinstance(v, str)
                    else {str(k).replace("-", "_"): x for k, x in v.items()} if isinstance(v, dict) else v
                    for v in value]
        return value

    @field_validator("rollouts", mode="before")
    @classmethod
    def _parse_rollouts(cls, value: Any) -> Any:
        """YAML mappings with dashes (``shadow-fraction`` = ``shadow_fraction``); pool names keep theirs."""
        if isinstance(value, dict):
            value = [value]
        if isinstance(value, (list, tuple)):
            return [{str(k).replace("-", "_"): x for k, x in v.items()} if isinstance(v, dict) else v for v in value]
        return value

    @field_validator("model_aliases", mode="before")
    @classmethod
    def _parse_aliases(cls, value: Any) -> Any:
        """``--model-alias`` strings (``ALIAS=MODEL``) or a YAML mapping."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)):
            return dict(parse_alias(v) if isinstance(v, str) else v for v in value)
        return value

    def check_runnable(self) -> None:
        """Refuse configurations that would start but could never serve."""
        if not self.upstreams and not self.pools:
            raise GatewayConfigError("no upstreams: give --upstream URL or --pool NAME=URL[,URL] (repeatable), or "
                                     "`upstreams:` / `pools:` in --config")
        for url in [*self.upstreams, *(u for p in self.pools for u in p.upstreams)]:
            parts = urlsplit(url.removeprefix("dns+"))
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise GatewayConfigError(f"bad upstream URL {url!r}: use http://HOST:PORT or dns+http://NAME:PORT")
        problems = check_table(self.pools, self.upstreams, self.model_aliases, self.default_model,
                               self.strict_model_names)
        problems += check_rollouts(self.rollouts, self.pools)
        if problems:
            raise GatewayConfigError("; ".join(problems))
        if self.jwt_jwks_url and self.jwt_secret:
            raise GatewayConfigError("give --jwt-jwks-url or --jwt-secret, not both")
        if self.metrics_token is not None and len(self.metrics_token.strip()) < _MIN_TOKEN_CHARS:
            # Checked here, not by a Field constraint: pydantic's message would echo the token.
            raise GatewayConfigError(f"--metrics-token must be at least {_MIN_TOKEN_CHARS} characters "
                                     "(e.g. `openssl rand -hex 32`)")
        if self.total_timeout < self.attempt_timeout:
            raise GatewayConfigError("--total-timeout must be at least --attempt-timeout")

    @property
    def jwt_enabled(self) -> bool:
        return bool(self.jwt_jwks_url or self.jwt_secret)


_FLAG_NAMES = {"upstream": "upstreams", "pool": "pools", "model_alias": "model_aliases"}


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a gateway YAML file into setting names (dashes allowed: ``split-threshold`` = ``split_threshold``).

    ``upstream`` is accepted for ``upstreams``, ``pool`` for ``pools`` and ``model_alias`` for ``model_aliases``
    (the flags' names); each as one value or a list.
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise GatewayConfigError(f"cannot read --config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise GatewayConfigError(f"--config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise GatewayConfigError(f"--config {path} must hold a mapping of settings, got {type(data).__name__}")
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        name = _FLAG_NAMES.get(name, name)
        if name == "upstreams" and isinstance(value, str):
            value = [value]
        out[name] = value
    unknown = sorted(set(out) - set(GatewaySettings.model_fields))
    if unknown:
        raise GatewayConfigError(f"--config {path}: unknown settings {unknown}")
    try:
        GatewaySettings(**out)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise GatewayConfigError(f"--config {path}: `{'.'.join(map(str, first['loc']))}`: {first['msg']}") from None
    return out
