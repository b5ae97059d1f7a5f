"""The rerank client as the UI sets it up: URLs, Retry-After, and one human sentence per failure (real sockets,
no mocks)."""

from __future__ import annotations

import email.utils
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from rerankd.client import RerankAPIError, error_detail, rerank_url
from rerankd.http.headers import parse_retry_after
from rerankd.ui.upstream import describe_status, page_client
from support import free_port


def test_rerank_url_appends_the_route_only_to_a_base_url() -> None:
    assert rerank_url("http://gw:8080") == "http://gw:8080/v1/rerank"
    assert rerank_url("http://gw:8080/api/") == "http://gw:8080/api/v1/rerank"
    assert rerank_url("http://gw:8080/v2/rerank") == "http://gw:8080/v2/rerank"


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 <= parse_retry_after(in_a_minute) <= 61  # type: ignore[operator]
    assert parse_retry_after(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0.0


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (401, None, "--api-key"),
        (403, None, "not allowed"),
        (413, None, "fewer or shorter documents"),
        (422, None, "fix the input"),
        (429, 7.0, "Try again in 7 seconds (Retry-After)"),
        (429, 1.0, "Try again in 1 second (Retry-After)"),
        (503, None, "Try again in a moment"),
        (404, None, "Check `--gateway-url`"),
        (502, 2.0, "failed (502)"),
    ],
)
def test_each_status_gets_its_own_advice(status: int, retry_after: float | None, expected: str) -> None:
    message = describe_status(status, "the service's words", retry_after, "http://gw/v1/rerank")
    assert expected in message
    assert message.endswith("Service said: the service's words")


def testerror_detail_reads_every_common_body_shape() -> None:
    def detail(**kwargs: object) -> str:
        return error_detail(httpx.Response(400, **kwargs))  # type: ignore[arg-type]

    assert detail(json={"error": {"message": "`top_n`: too big", "type": "invalid_request"}}) == "`top_n`: too big"
    assert detail(json={"detail": "Not Found"}) == "Not Found"
    assert detail(json={"message": "flat"}) == "flat"
    assert detail(text="plain text body") == "plain text body"
    assert detail(text="") == "Bad Request"
    assert len(detail(text="x" * 5000)) == 300


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: the shape of a hung upstream."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


async def test_a_hung_upstream_becomes_a_timeout_message(silent_server: str) -> None:
    client = page_client(silent_server, api_key="secret-key-xyz", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(RerankAPIError) as caught:
        await client.rerank("q", ["d"])
    assert time.monotonic() - started < 5
    assert "within 0.5 s (timeout)" in caught.value.message and "--timeout" in caught.value.message
    assert caught.value.status is None
    assert "secret-key-xyz" not in caught.value.message and "secret-key-xyz" not in repr(client)


async def test_a_closed_port_becomes_a_cannot_reach_message() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(RerankAPIError, match=r"Cannot reach the rerank service at http://127\.0\.0\.1:\d+/v1/rerank"):
        await page_client(f"http://127.0.0.1:{port}", timeout=5).rerank("q", ["d"])
