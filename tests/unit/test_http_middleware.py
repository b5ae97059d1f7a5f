"""The shared HTTP middleware, driven directly over ASGI with tiny apps (no server, no model).

A raw ASGI app shows what the middleware itself answers; a FastAPI app with the room's error handlers
shows the path the real apps take. Each test names the behaviour a client or an operator relies on.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rerankd.http import HttpMiddleware, error_response, install_error_handlers, known_routes_label, request_id_of
from rerankd.observability.tasks import task_of_route

LIMIT = 1024
TIMEOUT = 0.05  # seconds of body silence before a 408: tiny, so the stalled-body test takes no longer


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Metrics:
    """Real prometheus metrics with the names the apps use, in a registry of their own."""

    registry: CollectorRegistry
    requests_total: Counter
    request_duration_seconds: Histogram

    @classmethod
    def fresh(cls) -> Metrics:
        registry = CollectorRegistry()
        return cls(registry, Counter("t_requests_total", "", ["route", "status", "task"], registry=registry),
                   Histogram("t_request_duration_seconds", "", ["route", "task"], registry=registry))

    def counted(self) -> dict[tuple[str, str], float]:
        return {(s.labels["route"], s.labels["status"]): s.value
                for family in self.registry.collect() if family.name == "t_requests"
                for s in family.samples if s.name == "t_requests_total"}

    def tasks(self) -> dict[tuple[str, str], float]:
        """(route, task) → requests counted, and the latency histogram's count for the same pair."""
        counts: dict[tuple[str, str], float] = {}
        for family in self.registry.collect():
            for s in family.samples:
                if s.name in ("t_requests_total", "t_request_duration_seconds_count"):
                    key = (s.labels["route"], s.labels["task"])
                    counts[key] = counts.get(key, 0) + s.value
        return counts


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body (the way a handler does), then answers what it saw, as JSON."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    seen = {"request_id": request_id_of(scope), "given": scope["state"]["request_id_given"],
            "content_type": dict(scope["headers"]).get(b"content-type", b"").decode(), "body_bytes": len(body)}
    payload = json.dumps(seen).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"cache-control", b"max-age=60")]})
    await send({"type": "http.response.body", "body": payload})


def fastapi_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"body_bytes": len(await request.body())}

    return app


def wrap(app: ASGIApp, **options: Any) -> HttpMiddleware:
    settings: dict[str, Any] = {"route_label": known_routes_label(frozenset({"/echo"})), "max_body_bytes": LIMIT,
                                "body_timeout": TIMEOUT, **options}
    return HttpMiddleware(app, **settings)


def body_receive(*chunks: bytes) -> Receive:
    """The client sends ``chunks`` as the body, then waits (disconnects only after the answer is sent)."""
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    gone = asyncio.Event()

    async def receive() -> Message:
        if messages:
            return messages.pop(0)
        await gone.wait()
        return {"type": "http.disconnect"}

    return receive


async def call(app: ASGIApp, path: str = "/echo", *, method: str = "POST", headers: Mapping[str, str] | None = None,
               receive: Receive | None = None) -> Reply:
    scope: Scope = {"type": "http", "http_version": "1.1", "scheme": "http", "method": method, "path": path,
                    "raw_path": path.encode(), "root_path": "", "query_string": b"", "server": ("test", 80),
                    "client": ("127.0.0.1", 1), "headers": [
                        (k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(app(scope, receive or body_receive(b"{}"), send), 5)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return Reply(start["status"], [(k.decode(), v.decode()) for k, v in start["headers"]],
                 b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


# --- request id ---------------------------------------------------------------------------------------------

async def test_a_safe_request_id_is_echoed_and_seen_by_the_app() -> None:
    reply = await call(wrap(echo_app), headers={"X-Request-ID": "trace-42:a/b+c=d"})
    assert reply.header("x-request-id") == "trace-42:a/b+c=d"
    assert reply.json()["request_id"] == "trace-42:a/b+c=d" and reply.json()["given"] is True


@pytest.mark.parametrize("given", [None, "", "has space", "quote\"d", "x" * 129, "line\nbreak"])
async def test_a_missing_or_unsafe_request_id_is_replaced_by_a_fresh_one(given: str | None) -> None:
    headers = {} if given is None else {"X-Request-ID": given}
    reply = await call(wrap(echo_app), headers=headers)
    fresh = reply.header("x-request-id") or ""
    assert fresh != given and len(fresh) == 32 and int(fresh, 16) >= 0
    assert reply.json()["request_id"] == fresh and reply.json()["given"] is False


async def test_every_answer_gets_its_own_request_id() -> None:
    app = wrap(echo_app)
    first, second = await call(app), await call(app)
    assert first.header("x-request-id") != second.header("x-request-id")


# --- body cap and body timeout ------------------------------------------------------------------------------

async def test_a_declared_length_over_the_cap_is_413_before_the_app_or_the_key_check_runs() -> None:
    called = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        called.append(scope)
        await echo_app(scope, receive, send)

    reply = await call(wrap(app, api_key="k"), headers={"Content-Length": str(LIMIT + 1)})  # and no key
    assert reply.status == 413 and not called
    expected = error_response(413, f"request body of {LIMIT + 1} bytes exceeds the limit of {LIMIT} bytes")
    assert reply.body == expected.body
    assert reply.json()["error"] == {"message": f"request body of {LIMIT + 1} bytes exceeds the limit of {LIMIT} bytes",
                                     "type": "payload_too_large", "code": 413}


async def test_a_body_at_the_cap_passes() -> None:
    reply = await call(wrap(echo_app), headers={"Content-Length": str(LIMIT)}, receive=body_receive(b"a" * LIMIT))
    assert reply.status == 200 and reply.json()["body_bytes"] == LIMIT


@pytest.mark.parametrize("make_app", [lambda: echo_app, fastapi_app], ids=["raw-asgi", "fastapi"])
async def test_a_streamed_body_over_the_cap_is_413_with_the_one_error_body(make_app: Callable[[], ASGIApp]) -> None:
    chunks = [b"a" * 400] * 3  # no Content-Length: only counting the bytes finds it too large
    reply = await call(wrap(make_app()), receive=body_receive(*chunks))
    assert reply.status == 413
    assert reply.body == error_response(413, f"request body exceeds the limit of {LIMIT} bytes").body
    assert reply.header("x-request-id") and reply.header("x-content-type-options") == "nosniff"


@pytest.mark.parametrize("make_app", [lambda: echo_app, fastapi_app], ids=["raw-asgi", "fastapi"])
async def test_a_stalled_body_is_cut_off_with_408(make_app: Callable[[], ASGIApp]) -> None:
    """Slowloris: the first chunk arrives, then nothing; the answer comes after the tiny timeout."""
    never = asyncio.get_running_loop().create_future()
    first = True

    async def stalling_receive() -> Message:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b'{"query"', "more_body": True}
        return await never  # the client never sends the rest

    reply = await call(wrap(make_app()), headers={"Content-Length": "100"}, receive=stalling_receive)
    assert reply.status == 408
    message = f"request body not received within {TIMEOUT:g} s of silence"
    assert reply.body == error_response(408, message).body
    assert reply.json()["error"]["type"] == "request_timeout"


# --- API key ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("authorization", "message"), [
    (None, "missing API key: send `Authorization: Bearer <key>`"),
    ("Basic c2VjcmV0", "missing API key: send `Authorization: Bearer <key>`"),
    ("Bearer", "missing API key: send `Authorization: Bearer <key>`"),
    ("Bearer not-the-key", "invalid API key"),
])
async def test_no_or_a_wrong_key_is_401_with_www_authenticate(authorization: str | None, message: str) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    reply = await call(wrap(echo_app, api_key="s3cret"), headers=headers)
    assert reply.status == 401 and reply.header("www-authenticate") == "Bearer"
    assert reply.body == error_response(401, message).body
    assert reply.json()["error"]["type"] == "unauthorized"


async def test_the_right_key_in_any_case_of_bearer_or_a_public_path_passes() -> None:
    app = wrap(echo_app, api_key="s3cret", public_paths=frozenset({"/health"}))
    assert (await call(app, headers={"Authorization": "Bearer s3cret"})).status == 200
    assert (await call(app, headers={"Authorization": "bearer  s3cret "})).status == 200
    assert (await call(app, "/health", method="GET")).status == 200
    assert (await call(app, "/health/x", method="GET")).status == 401


# --- security headers ---------------------------------------------------------------------------------------

async def test_security_headers_and_csp_on_answers_and_refusals() -> None:
    app = wrap(echo_app, api_key="k")
    for reply in (await call(app, headers={"Authorization": "Bearer k"}), await call(app)):
        assert reply.header("x-content-type-options") == "nosniff"
        assert reply.header("x-frame-options") == "DENY"
        assert reply.header("referrer-policy") == "no-referrer"
        assert reply.header("content-security-policy") == "default-src 'none'; frame-ancestors 'none'"
        assert reply.header("access-control-allow-origin") is None
    refused = await call(app)
    assert refused.status == 401 and refused.header("cache-control") == "no-store"


async def test_a_header_the_app_sets_is_kept_and_the_docs_pages_may_run_scripts() -> None:
    reply = await call(wrap(echo_app))
    assert [v for k, v in reply.headers if k == "cache-control"] == ["max-age=60"]  # the app's own, not doubled
    docs = await call(wrap(echo_app), "/docs", method="GET")
    assert docs.header("content-security-policy") is None and docs.header("x-frame-options") == "DENY"


# --- access log and metrics ---------------------------------------------------------------------------------

async def test_the_route_label_hook_bounds_the_label_set() -> None:
    metrics = Metrics.fresh()
    label = known_routes_label(frozenset({"/echo"}), {"/admin/": "/admin"})
    app = wrap(echo_app, route_label=label, metrics=metrics, api_key="k")
    auth = {"Authorization": "Bearer k"}
    for path in ("/echo", "/admin/keys/a", "/admin/keys/b", "/admin", "/scan/1", "/scan/2", "/.env"):
        await call(app, path, headers=auth)
    await call(app, "/echo")  # refused: counted too, with its status
    assert metrics.counted() == {("/echo", "200"): 1, ("/admin", "200"): 2, ("other", "200"): 4,
                                 ("/echo", "401"): 1}


async def test_the_task_label_hook_labels_both_series_and_defaults_to_empty() -> None:
    """The app names each route label's task (rerankd: rerank or embed); without the hook the label is empty."""
    metrics = Metrics.fresh()
    label = known_routes_label(frozenset({"/echo", "/embed"}))
    app = wrap(echo_app, route_label=label, metrics=metrics, task_label=task_of_route)
    for path in ("/echo", "/embed", "/embed", "/scan"):
        await call(app, path)
    # Each request once in the counter and once in the histogram's count.
    assert metrics.tasks() == {("/echo", ""): 2, ("/embed", "embed"): 4, ("other", ""): 2}
    plain = Metrics.fresh()
    await call(wrap(echo_app, route_label=label, metrics=plain), "/embed")
    assert plain.tasks() == {("/embed", ""): 2}


def test_task_of_route_knows_every_scoring_and_embedding_route() -> None:
    assert {task_of_route(r) for r in ("/v1/rerank", "/v2/rerank", "/rerank", "/v1/score", "/score")} == {"rerank"}
    assert {task_of_route(r) for r in ("/v1/embeddings", "/embed", "/v2/embed")} == {"embed"}
    assert {task_of_route(r) for r in ("/health", "/metrics", "/v1/models", "other", "/admin")} == {""}


async def test_the_access_log_line_has_the_request_and_the_apps_own_fields(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        scope["state"]["key_name"] = "team-a"  # what an app's auth layer would record
        await echo_app(scope, receive, send)

    def caller(scope: Scope) -> dict[str, str]:
        return {"key": scope["state"]["key_name"]}

    with caplog.at_level(logging.INFO, logger="rerankd.access"):
        with_hook = await call(wrap(app, access_log_fields=caller), headers={"X-Request-ID": "r-1"})
        await call(wrap(app), headers={"X-Request-ID": "r-2"})
    lines = {r.request_id: r for r in caplog.records if r.name == "rerankd.access"}  # type: ignore[attr-defined]
    assert with_hook.status == 200
    line = lines["r-1"]
    assert (line.msg, line.route, line.method, line.status, line.key) == (  # type: ignore[attr-defined]
        "request", "/echo", "POST", 200, "team-a")
    assert line.latency_ms >= 0  # type: ignore[attr-defined]
    assert not hasattr(lines["r-2"], "key")


async def test_an_unhandled_error_is_logged_and_counted_as_500() -> None:
    metrics = Metrics.fresh()

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        await call(wrap(broken, metrics=metrics))
    assert metrics.counted() == {("/echo", "500"): 1}


# --- JSON bodies and real apps ------------------------------------------------------------------------------

async def test_a_post_body_is_parsed_as_json_whatever_its_label() -> None:
    reply = await call(wrap(echo_app), headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert reply.json()["content_type"] == "application/json"


async def test_through_httpx_a_fastapi_app_answers_the_rooms_errors_with_the_rooms_headers() -> None:
    app = wrap(fastapi_app(), metrics=Metrics.fresh())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        ok = await client.post("/echo", content=b'{"a": 1}', headers={"X-Request-ID": "via-httpx"})
        missing = await client.get("/nope")

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield b"a" * 400

        too_big = await client.post("/echo", content=chunks())
    assert ok.status_code == 200 and ok.json() == {"body_bytes": 8} and ok.headers["x-request-id"] == "via-httpx"
    assert missing.status_code == 404 and missing.content == error_response(404, "Not Found").body
    assert missing.headers["content-security-policy"].startswith("default-src 'none'")
    assert too_big.status_code == 413 and too_big.json()["error"]["type"] == "payload_too_large"


def test_hooks_are_plain_callables() -> None:
    label = known_routes_label(frozenset({"/v1/rerank"}), {"/admin/": "/admin", "/internal/": "/internal"})
    assert [label(p) for p in ("/v1/rerank", "/admin/keys", "/internal/x", "/v1/rerank/", "")] == [
        "/v1/rerank", "/admin", "/internal", "other", "other"]

