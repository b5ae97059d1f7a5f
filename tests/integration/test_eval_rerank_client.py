"""The eval's rerank client against a scripted rerank server on 127.0.0.1: retries on 429/503 with
Retry-After, exact splitting on 413, the concurrency bound, and errors that say what to fix.

Why a scripted server and not the real one: the real server answers 429/503 only under real overload,
which cannot be produced on cue in a test. This one speaks the same HTTP over a real socket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from rerankd.client import RerankAPIError, RerankClient, rerank_url
from support import free_port, serving_in_thread

pytestmark = pytest.mark.timeout(60)


@dataclass
class Script:
    """What the scripted server does; reset per test."""

    refusals: list[tuple[int, str | None]] = field(default_factory=list)  # (status, Retry-After) answered first
    max_documents: int = 1000
    api_key: str | None = None
    delay: float = 0.0
    bodies: list[dict] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0


def _error(status: int, message: str, retry_after: str | None = None) -> JSONResponse:
    headers = {"Retry-After": retry_after} if retry_after is not None else None
    return JSONResponse({"error": {"message": message, "type": "x", "code": status}}, status, headers=headers)


def _score(doc: str) -> float:
    return int(doc.split("-")[1]) / 100  # "doc-7" → 0.07: checkable in any order or chunking


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[str, list[Script]]]:
    holder = [Script()]

    async def rerank(request: Request) -> JSONResponse:
        script = holder[0]
        script.arrivals.append(time.monotonic())
        if script.api_key and request.headers.get("authorization") != f"Bearer {script.api_key}":
            return _error(401, "missing or invalid API key")
        body = await request.json()
        script.bodies.append(body)
        if script.refusals:
            status, retry_after = script.refusals.pop(0)
            return _error(status, "busy, try later", retry_after)
        if len(body["documents"]) > script.max_documents:
            return _error(413, f"too many documents (max-documents is {script.max_documents})")
        script.in_flight += 1
        script.max_in_flight = max(script.max_in_flight, script.in_flight)
        await asyncio.sleep(script.delay)
        script.in_flight -= 1
        results = [{"index": i, "relevance_score": _score(d)} for i, d in enumerate(body["documents"])]
        results.sort(key=lambda r: -r["relevance_score"])
        return JSONResponse({"id": "x", "model": "scripted", "results": results, "usage": {}})

    app = Starlette(routes=[Route("/v1/rerank", rerank, methods=["POST"])])
    with serving_in_thread(app, what="scripted server") as url:
        yield url, holder


@pytest.fixture
def server(scripted: tuple[str, list[Script]]) -> tuple[str, Script]:
    url, holder = scripted
    holder[0] = Script()
    return url, holder[0]


DOCS = [f"doc-{i}" for i in range(10)]


async def test_scores_come_back_in_input_order_with_model_and_instruction(server: tuple[str, Script]) -> None:
    url, script = server
    async with RerankClient(url, model="m", concurrency=2) as client:
        scores = await client.scores("q", DOCS, instruction="Find it")
    assert scores == [i / 100 for i in range(10)]
    assert script.bodies == [{"query": "q", "documents": DOCS, "return_documents": False, "model": "m",
                              "instruction": "Find it"}]
    assert client.served_model == "scripted"


async def test_429_and_503_are_retried_after_the_time_retry_after_asks(server: tuple[str, Script]) -> None:
    url, script = server
    script.refusals = [(429, "1"), (503, "0")]
    async with RerankClient(url, backoff=5.0) as client:  # a 5 s backoff would blow the bound below
        scores = await client.scores("q", DOCS[:3])
    assert scores == [0.0, 0.01, 0.02] and client.retries == 2 and len(script.arrivals) == 3
    assert 0.95 <= script.arrivals[1] - script.arrivals[0] < 3.0  # waited Retry-After: 1
    assert script.arrivals[2] - script.arrivals[1] < 0.9  # Retry-After: 0


async def test_gives_up_after_max_retries_with_the_servers_message(server: tuple[str, Script]) -> None:
    url, script = server
    script.refusals = [(503, "0")] * 3
    async with RerankClient(url, max_retries=2) as client:
        with pytest.raises(RerankAPIError, match=r"answered 503: busy, try later"):
            await client.scores("q", DOCS[:2])
    assert len(script.arrivals) == 3


async def test_a_refusal_carries_what_the_server_said(server: tuple[str, Script]) -> None:
    url, script = server
    script.refusals = [(429, "3")]
    async with RerankClient(url, max_retries=0) as client:
        with pytest.raises(RerankAPIError) as caught:
            await client.scores("q", DOCS[:1])
    refusal = caught.value
    assert (refusal.status, refusal.detail, refusal.error_type, refusal.retry_after) == (429, "busy, try later",
                                                                                         "x", 3.0)
    assert refusal.url == f"{url}/v1/rerank" and len(script.arrivals) == 1 and client.retries == 0


async def test_413_splits_the_list_exactly_and_remembers_the_size(server: tuple[str, Script]) -> None:
    url, script = server
    script.max_documents = 3
    async with RerankClient(url) as client:
        first = await client.scores("q", DOCS)
        refused = len(script.bodies)
        second = await client.scores("q", DOCS)
    assert first == second == [i / 100 for i in range(10)]
    assert client.max_documents == 2  # 10 refused → 5 refused → 2
    # The second call needed no refusal: chunks of the remembered size only.
    assert [len(b["documents"]) for b in script.bodies[refused:]] == [2] * 5


async def test_concurrency_is_bounded(server: tuple[str, Script]) -> None:
    url, script = server
    script.delay = 0.1
    async with RerankClient(url, concurrency=2) as client:
        results = await asyncio.gather(*(client.scores("q", DOCS[:2]) for _ in range(6)))
    assert results == [[0.0, 0.01]] * 6
    assert script.max_in_flight == 2


async def test_401_names_the_api_key_flag_and_a_key_is_sent(server: tuple[str, Script]) -> None:
    url, script = server
    script.api_key = "secret"
    async with RerankClient(url) as client:
        with pytest.raises(RerankAPIError, match=r"answered 401: missing or invalid API key \(pass --api-key"):
            await client.scores("q", DOCS[:1])
    async with RerankClient(url, api_key="secret") as client:
        assert await client.scores("q", DOCS[:1]) == [0.0]


async def test_unreachable_server_fails_fast_in_preflight() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    async with RerankClient(url, backoff=0.1) as client:
        with pytest.raises(RerankAPIError, match=r"could not reach the reranker at .*Check --reranker"):
            await client.preflight()
    assert time.monotonic() - started < 5


def test_rerank_url() -> None:
    assert rerank_url("http://h:8000") == "http://h:8000/v1/rerank"
    assert rerank_url("http://h:8000/") == "http://h:8000/v1/rerank"
    assert rerank_url("https://gw.example/api") == "https://gw.example/api/v1/rerank"
    assert rerank_url("http://h:8000/v2/rerank") == "http://h:8000/v2/rerank"
    with pytest.raises(ValueError, match="not an http"):
        rerank_url("h:8000")
