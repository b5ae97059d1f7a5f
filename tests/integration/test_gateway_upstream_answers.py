"""A replica's implausible token count is a 502 for the client, charged nothing, recorded once (real HTTP).

The replica here is a real HTTP server on 127.0.0.1 that answers whatever the test scripts: a 200 whose
``x-prompt-tokens`` header has 4,000 digits or says ``-5``, a body whose ``usage`` is negative or past
int32. The gateway must neither crash (500) nor bill a wrong amount.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from rerankd.gateway.settings import GatewaySettings
from support import free_port, running_gateway, serving_in_thread

pytestmark = pytest.mark.timeout(120)

ADMIN = "upstream-answers-admin"


class ScriptedReplica:
    """A real replica whose rerank answer is ``headers`` and ``usage`` as the test last set them."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.usage: Any = {"prompt_tokens": 7, "total_tokens": 7}

        async def rerank(request: Request) -> Response:
            documents = json.loads(await request.body())["documents"]
            body = {"id": "x", "model": "scripted", "usage": self.usage,
                    "results": [{"index": i, "relevance_score": 1.0 / (i + 1)} for i in range(len(documents))]}
            return Response(json.dumps(body), headers=self.headers, media_type="application/json")

        async def ready(_: Request) -> JSONResponse:
            return JSONResponse({"status": "ready"})

        self.app = Starlette(routes=[Route("/v1/rerank", rerank, methods=["POST"]), Route("/ready", ready)])

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
    with replica.serving() as upstream, gateway_in_front_of([upstream], database) as (gateway, key):
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
        metrics = httpx.get(f"{gateway}/metrics").text
        assert 'rerankd_gateway_key_tokens_total{key="billed"} 14.0' in metrics  # the two 200s
        assert f'rerankd_gateway_key_requests_total{{key="billed",status="502"}} {len(GARBAGE)}.0' in metrics
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
