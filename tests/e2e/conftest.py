"""Fixtures of the browser end-to-end tests: a real rerank and embedding backend, the UI launched in-process, a stub
upstream that answers error codes, a reverse proxy, and headless Chromium driven by Playwright.

Nothing here is a mock: every component is a real HTTP server on 127.0.0.1. The backend the UI talks
to comes from one fixture, ``ui_backend_url``, so that the gateway can be put in front of the server
in one place.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import Arrivals, free_port, running_gateway, running_server, serving_in_thread

# Gradio (imported lazily, below) must not phone home from a test run; CI has no network for it anyway.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

CHROMIUM = Path(os.environ.get("RERANKD_TEST_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(os.environ.get("RERANKD_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
E2E_ARTIFACTS = ARTIFACTS / "e2e"
PROXY_PREFIX = "/rerank-ui"

_saved_artifacts: list[Path] = []


def _missing(what: str) -> None:
    """Skip locally, but fail in CI: the e2e tests are part of the contract there, not optional."""
    message = f"{what} (CI installs it: see .ci/run)"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def save_artifact(name: str) -> Path:
    """A path under ``test-artifacts/e2e/`` for a screenshot; listed at the end of the pytest run."""
    E2E_ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = E2E_ARTIFACTS / name
    _saved_artifacts.append(path)
    return path


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print where the screenshots went, so a CI log reader finds them without reading the README."""
    existing = [p for p in _saved_artifacts if p.exists()]
    if existing:
        terminalreporter.write_sep("-", "e2e artifacts")
        for path in existing:
            terminalreporter.write_line(str(path))


# ------------------------------------------------------------------------------------------- servers


@contextmanager
def running_asgi(app: Any) -> Iterator[str]:
    """Serve any ASGI app under uvicorn in a thread on a free port; yield its base URL once it listens."""
    with serving_in_thread(app) as url:
        yield url


@contextmanager
def running_ui(gateway_url: str, api_key: str | None, *, timeout: float = 30.0,
               root_path: str | None = None, **options: Any) -> Iterator[str]:
    """``build_ui`` (with any more of its ``options``) + ``launch_ui`` in this process (``prevent_thread_lock``);
    yield the UI's local URL."""
    from rerankd.ui.app import build_ui, launch_ui

    blocks = build_ui(gateway_url, api_key=api_key, timeout=timeout, **options)
    url = launch_ui(blocks, host="127.0.0.1", port=free_port(), root_path=root_path, prevent_thread_lock=True)
    try:
        yield url.rstrip("/")
    finally:
        blocks.close()


@pytest.fixture(scope="session")
def ui_backend(tiny_model_dir: Path, embed_server_url: str,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The stack the UI talks to, as in production (``rerankd up --embedding-model``): a ``rerankd serve``
    replica (tiny reranker, requiring its own upstream key) and the session's tiny embedding server (the
    pool ``tiny-embedder``, for the search tab) behind one ``rerankd gateway``, and a gateway API key for the UI."""
    from rerankd.gateway.settings import GatewaySettings
    from rerankd.server.settings import ServerSettings

    upstream_key, admin = "e2e-replica-secret", "e2e-admin-secret"
    settings = ServerSettings(model=str(tiny_model_dir), served_model_name="tiny-reranker", device="cpu",
                              dtype="float32", max_model_len=512, max_documents=100, api_key=upstream_key)
    database = tmp_path_factory.mktemp("e2e-gateway") / "gateway.db"
    with running_server(settings) as server:
        gateway_settings = GatewaySettings(upstreams=[server], pools=[f"embed:tiny-embedder={embed_server_url}"],
                                           upstream_api_key=upstream_key, admin_key=admin,
                                           database_url=f"sqlite:///{database}", max_documents=100)
        with running_gateway(gateway_settings) as gateway:
            created = httpx.post(f"{gateway}/admin/keys", json={"name": "e2e-ui"},
                                 headers={"Authorization": f"Bearer {admin}"}, timeout=10)
            assert created.status_code == 201, created.text
            deadline = time.monotonic() + 30
            while httpx.get(f"{gateway}/ready", timeout=5).status_code != 200:
                assert time.monotonic() < deadline, "gateway never saw the replica ready"
                time.sleep(0.1)
            yield gateway, created.json()["key"]


@pytest.fixture(scope="session")
def ui_api_key(ui_backend: tuple[str, str]) -> str:
    """The gateway key the UI sends (created in the gateway's store; a leak into the page is easy to spot)."""
    return ui_backend[1]


@pytest.fixture(scope="session")
def ui_backend_url(ui_backend: tuple[str, str]) -> str:
    """The rerank API the UI talks to: the gateway, requiring ``ui_api_key``."""
    return ui_backend[0]


@pytest.fixture(scope="session")
def ui_url(ui_backend_url: str, ui_api_key: str) -> Iterator[str]:
    """The UI in front of ``ui_backend_url`` with the right key (both tabs). Session-scoped, as the stub UI:
    each test module that uses it would otherwise launch its own Gradio app."""
    with running_ui(ui_backend_url, ui_api_key) as url:
        yield url


# --------------------------------------------------------------------------- a stub upstream, a proxy


@dataclass(frozen=True)
class StubUpstream:
    """The stub rerank API's URL, and the count of ``sleep`` calls that have reached it."""

    url: str
    slow_calls: Arrivals


def _stub_upstream_app(slow_calls: Arrivals) -> Any:
    """A small rerank API whose behaviour the query chooses, to exercise the UI's error paths for real.

    ``status 429`` / ``status 503`` / ``status 413`` answer that code with a rerankd-shaped error body
    and ``Retry-After``; ``sleep S ...`` counts in ``slow_calls`` that it arrived, then waits S seconds;
    anything else is ranked by document length (longest first), so the expected order is known.
    """
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    retry_after = {429: "7", 503: "3"}

    async def rerank(request: Request) -> JSONResponse:
        body = await request.json()
        query: str = body["query"]
        words = query.split()
        if words[0] == "status":
            code = int(words[1])
            headers = {"Retry-After": retry_after[code]} if code in retry_after else {}
            error = {"message": f"stub upstream says {code}", "type": "stub", "code": code}
            return JSONResponse({"error": error}, status_code=code, headers=headers)
        if words[0] == "sleep":
            slow_calls.arrive()
            # Poll for the client going away: a hung call the UI gave up on ends here, not at shutdown.
            deadline = time.monotonic() + float(words[1])
            while time.monotonic() < deadline:
                if await request.is_disconnected():
                    return JSONResponse({"error": {"message": "client left"}}, status_code=499)
                await asyncio.sleep(0.05)
        documents = [d if isinstance(d, str) else d["text"] for d in body["documents"]]
        order = sorted(range(len(documents)), key=lambda i: (-len(documents[i]), i))[: body.get("top_n")]
        results = [{"index": i, "relevance_score": len(documents[i]) / (1 + len(documents[i])),
                    "document": {"text": documents[i]}} for i in order]
        return JSONResponse({"id": "stub-1", "model": "stub", "results": results,
                             "usage": {"prompt_tokens": 11, "total_tokens": 11}})

    return Starlette(routes=[Route("/v1/rerank", rerank, methods=["POST"])])


@pytest.fixture(scope="session")
def stub_upstream() -> Iterator[StubUpstream]:
    slow_calls = Arrivals()
    with running_asgi(_stub_upstream_app(slow_calls)) as url:
        yield StubUpstream(url, slow_calls)


@pytest.fixture(scope="session")
def stub_upstream_url(stub_upstream: StubUpstream) -> str:
    return stub_upstream.url


@pytest.fixture(scope="session")
def stub_ui_url(stub_upstream_url: str) -> Iterator[str]:
    """A UI in front of the stub upstream, with a 4 s timeout so a hung upstream is reported quickly."""
    with running_ui(stub_upstream_url, "stub-key", timeout=4.0) as url:
        yield url


def _reverse_proxy_app(target: str, prefix: str) -> Any:
    """A streaming reverse proxy serving ``target`` under ``prefix`` (as nginx ``location /prefix/``).

    Streaming matters: Gradio sends results over server-sent events, which a buffering proxy would hold.
    """
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    client = httpx.AsyncClient(base_url=target, timeout=httpx.Timeout(60.0))
    # Bodies pass through as raw bytes (still compressed, so Content-Encoding stays); the length may not.
    hop_by_hop = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host",
                  "content-length"}

    async def proxy(request: Request) -> Response:
        path = request.url.path
        if not path.startswith(prefix):
            return Response("not under the proxied prefix", status_code=404)
        upstream_path = path[len(prefix):] or "/"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in hop_by_hop}
        headers["x-forwarded-host"] = request.headers.get("host", "")
        headers["x-forwarded-proto"] = request.url.scheme
        upstream = client.build_request(request.method, upstream_path, params=request.query_params,
                                        headers=headers, content=await request.body())
        response = await client.send(upstream, stream=True)
        out_headers = {k: v for k, v in response.headers.items() if k.lower() not in hop_by_hop}
        return StreamingResponse(response.aiter_raw(), status_code=response.status_code, headers=out_headers,
                                 background=BackgroundTask(response.aclose))

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
    return Starlette(routes=[Route("/{path:path}", proxy, methods=methods)])


@pytest.fixture(scope="module")
def proxied_ui_url(ui_backend_url: str, ui_api_key: str) -> Iterator[str]:
    """The UI launched with ``root_path=/rerank-ui`` behind a real reverse proxy; yields the public URL."""
    with running_ui(ui_backend_url, ui_api_key, root_path=PROXY_PREFIX) as local, \
            running_asgi(_reverse_proxy_app(local, PROXY_PREFIX)) as proxy:
        yield proxy + PROXY_PREFIX


# ------------------------------------------------------------------------------------------- browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium (never Playwright's own download: CI installs ``chromium`` with apt).

    Module-scoped, not session-scoped: Playwright's sync API runs an event loop on the main thread while it
    is started, and every async test collected after this module would fail with "Runner.run() cannot be
    called from a running event loop".
    """
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        _missing(f"Chromium is not installed at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    executable = CHROMIUM if CHROMIUM.exists() else Path(shutil.which("chromium") or CHROMIUM)
    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(executable_path=str(executable), headless=True,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()
    finally:
        playwright.stop()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh page (own cookies and storage) per test, wide enough for the two-column layout."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, locale="en-US")
    context.set_default_timeout(20_000)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()
