"""What a replica answers is judged before a client sees it (real HTTP, a scripted replica).

The replica here is a real HTTP server on 127.0.0.1 that answers whatever the test scripts: a 200 whose
``x-prompt-tokens`` header has 4,000 digits or says ``-5``, a body whose ``usage`` is negative or past
int32, an 80 MB answer, a 200 that is HTML or JSON of the wrong shape, an error page carrying a database
URL. The gateway must neither crash (500), nor bill a wrong amount, nor buffer the 80 MB, nor pass the
wrong shape or the secret on.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from rerankd.gateway.settings import GatewaySettings
from support import free_port, running_gateway, serving_in_thread

pytestmark = pytest.mark.timeout(120)

ADMIN = "upstream-answers-admin"
METRICS_TOKEN = "upstream-answers-metrics-token"
JWT_SECRET = "a-shared-secret-long-enough-for-hs256-0123456789abcdef"


class ScriptedReplica:
    """A real replica whose rerank answer is ``headers`` and ``usage`` as the test last set them; or, when
    the test sets them, ``raw`` (status, body) on every scoring route, or ``stream`` bytes sent in chunks."""

    CHUNK = 64 * 1024

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.usage: Any = {"prompt_tokens": 7, "total_tokens": 7}
        self.raw: tuple[int, bytes] | None = None
        self.stream: int | None = None  # bytes of a chunked answer with no Content-Length
        self.streamed = 0  # bytes of it handed to the server so far
        self.stream_ended = threading.Event()
        self.requests = 0

        async def chunks() -> AsyncIterator[bytes]:
            try:
                while self.stream is not None and self.streamed < self.stream:
                    self.streamed += self.CHUNK
                    yield b" " * self.CHUNK
                    await asyncio.sleep(0)
            finally:
                self.stream_ended.set()

        async def rerank(request: Request) -> Response:
            self.requests += 1
            if self.stream is not None:
                return StreamingResponse(chunks(), headers={**self.headers}, media_type="application/json")
            if self.raw is not None:
                return Response(self.raw[1], status_code=self.raw[0], headers=self.headers)
            documents = json.loads(await request.body())["documents"]
            body = {"id": "x", "model": "scripted", "usage": self.usage,
                    "results": [{"index": i, "relevance_score": 1.0 / (i + 1)} for i in range(len(documents))]}
            return Response(json.dumps(body), headers=self.headers, media_type="application/json")

        async def ready(_: Request) -> JSONResponse:
            return JSONResponse({"status": "ready"})

        self.app = Starlette(routes=[Route(path, rerank, methods=["POST"]) for path in ("/v1/rerank", "/rerank",
                                                                                     "/v1/score")]
                             + [Route("/ready", ready)])

    @contextmanager
    def serving(self) -> Iterator[str]:
        with serving_in_thread(self.app, free_port(), what="scripted replica") as url:
            yield url


@contextmanager
def gateway_in_front_of(upstreams: list[str], database: Path, **settings: Any) -> Iterator[tuple[str, str]]:
    """A gateway (ready) and a key with a tokens/min budget of 1000."""
    config = GatewaySettings(upstreams=upstreams, database_url=f"sqlite:///{database}", admin_key=ADMIN,
                             **settings)
    with running_gateway(config) as gateway:
        deadline = time.monotonic() + 20
        while httpx.get(f"{gateway}/ready").status_code != 200:
            assert time.monotonic() < deadline, "the gateway never saw the scripted replica ready"
            time.sleep(0.05)
        created = httpx.post(f"{gateway}/admin/keys", json={"name": "billed", "tpm": 1000},
                             headers={"Authorization": f"Bearer {ADMIN}"})
        assert created.status_code == 201, created.text
        yield gateway, created.json()["key"]


def scrape(gateway: str, token: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    reply = httpx.get(f"{gateway}/metrics", headers=headers)
    assert reply.status_code == 200, reply.text
    return reply.text


def usage_rows(database: Path) -> list[tuple[int, int]]:
    with sqlite3.connect(database) as db:
        return db.execute("SELECT status, tokens FROM usage_records ORDER BY created_at").fetchall()


GARBAGE: list[tuple[dict[str, str], Any, str]] = [
    ({"x-prompt-tokens": "9" * 4000}, {"prompt_tokens": 7}, "x-prompt-tokens"),
    ({"x-prompt-tokens": "-5"}, {"prompt_tokens": 7}, "x-prompt-tokens"),
    ({}, {"prompt_tokens": -5, "total_tokens": -5}, "usage.prompt_tokens"),
    ({}, {"prompt_tokens": 2**31}, "usage.prompt_tokens"),
    ({}, {"total_tokens": "12"}, "usage.total_tokens"),
    ({}, {"prompt_tokens": 1.5}, "usage.prompt_tokens"),
]


def test_an_implausible_token_count_is_a_502_and_is_not_charged(tmp_path: Path) -> None:
    replica, database = ScriptedReplica(), tmp_path / "gw.db"
    body = {"query": "q", "documents": ["a", "b"]}
    with (replica.serving() as upstream,
          gateway_in_front_of([upstream], database, metrics_token=METRICS_TOKEN) as (gateway, key)):
        headers = {"Authorization": f"Bearer {key}"}
        first = httpx.post(f"{gateway}/v1/rerank", json=body, headers=headers)
        assert first.status_code == 200, first.text
        assert first.headers["x-ratelimit-remaining-tokens"] == "993"  # the reservation settled to the real 7
        for replica.headers, replica.usage, named in GARBAGE:
            answer = httpx.post(f"{gateway}/v1/rerank", json=body, headers=headers)
            assert answer.status_code == 502, (named, answer.text)
            error = answer.json()["error"]
            assert error["type"] == "upstream_malformed" and named in error["message"], error
            assert len(error["message"]) < 300  # the 4,000 digits are not echoed back
        replica.headers, replica.usage = {}, {"prompt_tokens": 7, "total_tokens": 7}
        after = httpx.post(f"{gateway}/v1/rerank", json=body, headers=headers)
        assert after.status_code == 200
        assert after.headers["x-ratelimit-remaining-tokens"] == "986"  # the two 200s' 7 each; the 502s refunded
        metrics = scrape(gateway, METRICS_TOKEN)
        assert 'rerankd_gateway_key_tokens_total{key="billed",task="rerank"} 14.0' in metrics  # the two 200s
        refused = f'rerankd_gateway_key_requests_total{{key="billed",status="502",task="rerank"}} {len(GARBAGE)}.0'
        assert refused in metrics
    # The gateway has stopped, its ledger is flushed: one row per request, the 502s unbilled.
    assert usage_rows(database) == [(200, 7), *[(502, 0)] * len(GARBAGE), (200, 7)]


def test_a_split_part_with_an_implausible_count_fails_the_request_with_a_502(tmp_path: Path) -> None:
    good, bad, database = ScriptedReplica(), ScriptedReplica(), tmp_path / "gw.db"
    bad.usage = {"prompt_tokens": -5}
    body = {"query": "q", "documents": ["a", "b", "c", "d"]}
    with ExitStack() as stack:
        upstreams = [stack.enter_context(good.serving()), stack.enter_context(bad.serving())]
        gateway, key = stack.enter_context(gateway_in_front_of(upstreams, database, split_threshold=2))
        answer = httpx.post(f"{gateway}/v1/rerank", json=body, headers={"Authorization": f"Bearer {key}"})
        assert answer.status_code == 502, answer.text
        assert answer.json()["error"]["type"] == "upstream_malformed"
        assert "rerankd_gateway_split_requests_total 1.0" in httpx.get(f"{gateway}/metrics").text
        bad.usage = {"prompt_tokens": 3, "total_tokens": 3}
        merged = httpx.post(f"{gateway}/v1/rerank", json=body, headers={"Authorization": f"Bearer {key}"})
        assert merged.status_code == 200 and merged.json()["usage"]["prompt_tokens"] == 10  # 7 + 3
    assert usage_rows(database) == [(502, 0), (200, 10)]


# -- the size of an answer ----------------------------------------------------------------------------------


def test_an_answer_past_the_byte_cap_is_a_502_and_is_never_read_whole(tmp_path: Path) -> None:
    replica = ScriptedReplica()
    replica.headers = {"x-prompt-tokens": "7"}  # a count that needs no body: the old gateway passed it all on
    with (replica.serving() as upstream,
          gateway_in_front_of([upstream], tmp_path / "gw.db", max_upstream_answer_bytes=1024 * 1024) as (gateway,
                                                                                                         key)):
        replica.stream = 80 * 1024 * 1024
        started = time.monotonic()
        answer = httpx.post(f"{gateway}/v1/rerank", json={"query": "q", "documents": ["a"]},
                            headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert answer.status_code == 502, answer.status_code
        error = answer.json()["error"]
        assert error["type"] == "upstream_malformed" and "--max-upstream-answer-bytes" in error["message"], error
        assert time.monotonic() - started < 10
        assert replica.stream_ended.wait(20), "the replica was never cut off"
        # The gateway stopped reading at 1 MiB; what the replica pushed past it sat in socket buffers.
        assert replica.streamed < 16 * 1024 * 1024, replica.streamed
        assert replica.requests == 1  # not retried: any replica would send the same answer
        # A declared length past the cap is refused before reading a byte of it.
        replica.stream, replica.raw = None, (200, b" " * (2 * 1024 * 1024))
        declared = httpx.post(f"{gateway}/v1/rerank", json={"query": "q", "documents": ["a"]},
                              headers={"Authorization": f"Bearer {key}"})
        assert declared.status_code == 502 and "2097152 bytes" in declared.json()["error"]["message"]
        metrics = scrape(gateway)
        assert f'upstream_requests_total{{outcome="too_large",upstream="{upstream}"}} 2.0' in metrics
        assert f'upstream_breaker_state{{state="closed",upstream="{upstream}"}} 1.0' in metrics  # not charged


# -- the shape of a 200 -------------------------------------------------------------------------------------

RERANK = ("/v1/rerank", {"query": "q", "documents": ["a", "b"]})
TEI = ("/rerank", {"query": "q", "texts": ["a", "b"]})
SCORE = ("/v1/score", {"text_1": "q", "text_2": ["a", "b"]})

WRONG_SHAPES: list[tuple[tuple[str, dict[str, Any]], bytes, str]] = [
    (RERANK, b"<html><body>Sign in to continue</body></html>", "not JSON"),
    (RERANK, b'{"id": "x"}', "`results` must be a list"),
    (RERANK, b'{"results": "all good"}', "`results` must be a list"),
    (RERANK, b'{"results": [{"index": 5, "relevance_score": 0.5}]}',
     "`results`[0].index must be an integer from 0 to 1"),
    (RERANK, b'{"results": [{"index": 0, "relevance_score": "high"}]}', "`results`[0].relevance_score"),
    (RERANK, b'{"results": [{"index": true, "relevance_score": 0.1}]}', "`results`[0].index"),
    (TEI, b'{"results": []}', "the answer must be a JSON list"),
    (TEI, b'[{"index": 0, "relevance_score": 0.5}]', "[0].score must be a finite number"),
    (SCORE, b'{"results": []}', "`data` must be a list"),
    (SCORE, b'{"data": [{"index": 0, "score": 1}, {"index": 1, "score": 1}, {"index": 0, "score": 1}]}',
     "`data` has 3 items for 2 inputs"),
]


def test_a_200_in_the_wrong_shape_is_a_502_naming_what_is_wrong(tmp_path: Path) -> None:
    replica, database = ScriptedReplica(), tmp_path / "gw.db"
    replica.headers = {"x-prompt-tokens": "7"}
    with replica.serving() as upstream, gateway_in_front_of([upstream], database) as (gateway, key):
        for (route, body), raw, named in WRONG_SHAPES:
            replica.raw = (200, raw)
            answer = httpx.post(f"{gateway}{route}", json=body, headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code == 502, (route, named, answer.text)
            error = answer.json()["error"]
            if isinstance(error, str):  # a TEI body: TEI's error shape, a replica's fault is its "Backend"
                assert answer.json()["error_type"] == "Backend" and named in error, (named, answer.text)
                continue
            assert error["type"] == "upstream_malformed" and named in error["message"], (named, error)
        # Every route's right shape still passes (the TEI list and the score object included).
        replica.raw = (200, b'[{"index": 1, "score": 0.9}, {"index": 0, "score": 0.1}]')
        tei = httpx.post(f"{gateway}/rerank", json=TEI[1], headers={"Authorization": f"Bearer {key}"})
        assert tei.status_code == 200 and tei.json()[0]["index"] == 1
        replica.raw = (200, b'{"data": [{"index": 0, "object": "score", "score": 0.5}], "usage": {}}')
        score = httpx.post(f"{gateway}/v1/score", json=SCORE[1], headers={"Authorization": f"Bearer {key}"})
        assert score.status_code == 200
    assert usage_rows(database) == [*[(502, 0)] * len(WRONG_SHAPES), (200, 7), (200, 7)]


# -- the words of an error ----------------------------------------------------------------------------------

DSN = "postgresql://billing:hunter2@db.internal:5432/prod"


def test_an_error_page_never_reaches_the_client_but_the_gateway_log(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    replica = ScriptedReplica()
    trace = f"<html><pre>Traceback (most recent call last):\n  connect({DSN!r})\nOperationalError</pre></html>"
    with replica.serving() as upstream, gateway_in_front_of([upstream], tmp_path / "gw.db") as (gateway, key):
        for status in (400, 404, 500):
            replica.raw = (status, trace.encode())
            with caplog.at_level(logging.WARNING, logger="rerankd.gateway.answers"):
                answer = httpx.post(f"{gateway}/v1/rerank", json=RERANK[1],
                                    headers={"Authorization": f"Bearer {key}", "X-Request-ID": f"trace-{status}"})
            assert "hunter2" not in answer.text and "Traceback" not in answer.text, (status, answer.text)
            if status < 500:  # a 4xx is final; a 500 is retried and ends as the gateway's own 503
                assert answer.status_code == status
                assert answer.json()["error"]["message"] == (
                    f"the replica answered {status}; see the gateway log (request id trace-{status})")
            logged = [r for r in caplog.records if getattr(r, "request_id", "").startswith(f"trace-{status}")]
            assert logged and "hunter2" in logged[0].getMessage(), status  # the operator can still see it


def test_an_error_in_rerankd_or_vllm_shape_passes_through_rebuilt(tmp_path: Path) -> None:
    replica = ScriptedReplica()
    ours = {"error": {"message": "`documents`: at most 3 items", "type": "invalid_request", "code": 422,
                      "field": "documents", "debug": DSN}}
    vllm = {"object": "error", "message": "This model's maximum context length is 512 tokens", "type":
            "BadRequestError", "param": None, "code": 400}
    with replica.serving() as upstream, gateway_in_front_of([upstream], tmp_path / "gw.db") as (gateway, key):
        auth = {"Authorization": f"Bearer {key}"}
        replica.raw = (422, json.dumps(ours).encode())
        answer = httpx.post(f"{gateway}/v1/rerank", json=RERANK[1], headers=auth)
        assert answer.status_code == 422
        assert answer.json() == {"error": {"message": "`documents`: at most 3 items", "type": "invalid_request",
                                           "code": 422, "field": "documents"},
                                 "detail": "`documents`: at most 3 items"}  # no unknown field rides along
        replica.raw = (400, json.dumps(vllm).encode())
        answer = httpx.post(f"{gateway}/v1/rerank", json=RERANK[1], headers=auth)
        assert answer.status_code == 400 and answer.json()["error"]["message"] == vllm["message"]
        assert answer.json()["error"]["type"] == "BadRequestError"
        replica.raw = (422, json.dumps({"error": {"message": "x" * 100_000, "type": "<script>"}}).encode())
        answer = httpx.post(f"{gateway}/v1/rerank", json=RERANK[1], headers=auth)
        error = answer.json()["error"]
        assert answer.status_code == 422 and len(error["message"]) < 1100 and error["type"] == "invalid_request"


# -- tenants in /metrics ------------------------------------------------------------------------------------


def test_metrics_name_keys_only_to_the_metrics_token_and_jwt_subjects_never(tmp_path: Path) -> None:
    replica = ScriptedReplica()
    now = int(time.time())
    token = jwt.encode({"sub": "carol@example.com", "iat": now, "exp": now + 600}, JWT_SECRET, algorithm="HS256")
    for metrics_token in (None, METRICS_TOKEN):
        with (replica.serving() as upstream,
              gateway_in_front_of([upstream], tmp_path / f"gw-{bool(metrics_token)}.db", jwt_secret=JWT_SECRET,
                                  metrics_token=metrics_token) as (gateway, key)):
            for credential in (key, token):
                reply = httpx.post(f"{gateway}/v1/rerank", json=RERANK[1],
                                   headers={"Authorization": f"Bearer {credential}"})
                assert reply.status_code == 200, reply.text
            if metrics_token is None:
                metrics = scrape(gateway)
                assert 'rerankd_gateway_key_requests_total{key="*",status="200",task="rerank"} 2.0' in metrics
                assert 'rerankd_gateway_key_documents_total{key="*",task="rerank"} 4.0' in metrics
                assert "billed" not in metrics
            else:
                refused = httpx.get(f"{gateway}/metrics")
                assert refused.status_code == 401 and "--metrics-token" in refused.json()["error"]["message"]
                wrong = httpx.get(f"{gateway}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}x"})
                assert wrong.status_code == 401 and "billed" not in wrong.text
                metrics = scrape(gateway, metrics_token)
                assert 'rerankd_gateway_key_requests_total{key="billed",status="200",task="rerank"} 1.0' in metrics
                assert 'rerankd_gateway_key_requests_total{key="jwt:*",status="200",task="rerank"} 1.0' in metrics
                assert 'key="*"' not in metrics  # the named view replaces the sum, never both
            assert "carol" not in metrics
