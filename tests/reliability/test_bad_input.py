"""Bad input and hostile clients against a real server and a real gateway: never a 5xx, always a message.

Includes schemathesis runs (≥ 500 generated cases each) against the served OpenAPI documents: no server
error, every status documented, every body matching its schema.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rerankd.gateway.settings import GatewaySettings
from rerankd.server.settings import ServerSettings
from support import running_gateway, running_server

pytestmark = pytest.mark.timeout(300)

ADMIN = "bad-input-admin"
MAX_BODY = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[str]:
    settings = ServerSettings(model=str(tiny_model_dir), served_model_name="tiny-reranker", device="cpu",
                              dtype="float32", max_model_len=256, max_documents=1000, max_body_bytes=MAX_BODY,
                              body_timeout=1.0)
    with running_server(settings) as url:
        yield url


@pytest.fixture(scope="module")
def gateway(server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    db = tmp_path_factory.mktemp("bad-input") / "gw.db"
    settings = GatewaySettings(upstreams=[server], database_url=f"sqlite:///{db}", admin_key=ADMIN,
                               max_body_bytes=MAX_BODY, body_timeout=1.0, split_threshold=16)
    with running_gateway(settings) as url:
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        yield url


AUTH = {"Authorization": f"Bearer {ADMIN}"}


def both(server: str, gateway: str) -> list[tuple[str, dict[str, str]]]:
    return [(server, {}), (gateway, AUTH)]


def post(url: str, headers: dict[str, str], content: bytes | str, path: str = "/v1/rerank") -> httpx.Response:
    return httpx.post(url + path, content=content, headers={"content-type": "application/json", **headers},
                      timeout=120)


def assert_clear_error(response: httpx.Response, status: int, fragment: str) -> None:
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert fragment in error["message"], error
    assert "Traceback" not in response.text and 'File "' not in response.text


def test_huge_bodies_are_413_with_and_without_content_length(server: str, gateway: str) -> None:
    big = b'{"query": "q", "documents": ["' + b"a" * (MAX_BODY + 10) + b'"]}'
    for url, headers in both(server, gateway):
        assert_clear_error(post(url, headers, big), 413, "exceeds")

        def chunks() -> Iterator[bytes]:
            for i in range(0, len(big), 65536):
                yield big[i:i + 65536]
        streamed = httpx.post(url + "/v1/rerank", content=chunks(), headers=headers, timeout=60)
        assert_clear_error(streamed, 413, "exceeds")


def test_100k_documents_are_413(server: str, gateway: str) -> None:
    body = '{"query": "q", "documents": [' + ",".join(['"d"'] * 100_000) + "]}"
    for url, headers in both(server, gateway):
        assert_clear_error(post(url, headers, body), 413, "limit of 1000")


def test_a_3mb_document_is_cut_to_fit_and_scored(server: str, gateway: str) -> None:
    document = "lorem ipsum dolor sit amet " * (3 * 1024 * 1024 // 27)
    for url, headers in both(server, gateway):
        response = httpx.post(url + "/v1/rerank", json={"query": "q", "documents": [document, "short"],
                                                         "return_documents": False}, headers=headers, timeout=120)
        assert response.status_code == 200, response.text[:300]
        assert response.json()["usage"]["prompt_tokens"] <= 256 + 100


@pytest.mark.parametrize(("content", "status", "fragment"), [
    (b'{"query": "\xff\xfe", "documents": ["a"]}', 400, "UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "nested"),
    (b'{"query": "q", "documents": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400, "nested"),
    (b"not json at all", 400, "not valid JSON"),
    (b'{"query": 5, "documents": ["a"]}', 422, "query"),
    (b'{"query": "q", "documents": "a"}', 422, "documents"),
    (b'{"query": "q", "documents": [{"txt": "a"}]}', 422, "documents"),
    (b'{"query": "q", "documents": ["a"], "top_n": -1}', 422, "top_n"),
    (b'{"query": "q", "documents": ["a"], "top_n": "three"}', 422, "top_n"),
    (b'{"query": "q", "documents": ["a"], "max_tokens_per_doc": 0}', 422, "max_tokens_per_doc"),
    (b'{"query": "", "documents": ["a"]}', 422, "query"),
    (b'{"query": "q", "documents": []}', 422, "documents"),
    (b'[]', 422, "body"),
])
def test_malformed_bodies_get_a_4xx_naming_the_problem(server: str, gateway: str, content: bytes, status: int,
                                                        fragment: str) -> None:
    for url, headers in both(server, gateway):
        assert_clear_error(post(url, headers, content), status, fragment)


def test_huge_top_n_returns_everything(server: str, gateway: str) -> None:
    for url, headers in both(server, gateway):
        response = httpx.post(url + "/v1/rerank", json={"query": "q", "documents": ["a", "b"], "top_n": 10**15},
                              headers=headers)
        assert response.status_code == 200 and len(response.json()["results"]) == 2


def test_a_stalled_body_is_cut_off_with_408(server: str, gateway: str) -> None:
    """Slowloris: headers promise a body that never finishes; the connection is freed after --body-timeout."""
    for url in (server, gateway):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /v1/rerank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Authorization: Bearer " + ADMIN.encode() + b"\r\nContent-Length: 1000\r\n\r\n{\"query\"")
            started = time.monotonic()
            reply = sock.recv(4096).decode(errors="replace")
            waited = time.monotonic() - started
        assert reply.startswith("HTTP/1.1 408"), reply[:200]
        assert "request body not received" in reply
        assert waited < 10


def test_many_concurrent_connections_are_all_answered(server: str, gateway: str) -> None:
    """400 clients at once: each is served or told to come back (503 + Retry-After past --max-queue 256)."""
    async def flood(url: str, headers: dict[str, str]) -> list[tuple[int, str | None]]:
        limits = httpx.Limits(max_connections=400, max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=120, limits=limits, headers=headers) as client:
            async def one(i: int) -> tuple[int, str | None]:
                response = await client.post(f"{url}/v1/rerank", json={"query": f"q{i}", "documents": ["a", "b"]})
                return response.status_code, response.headers.get("retry-after")
            return await asyncio.gather(*(one(i) for i in range(400)))

    for url, headers in both(server, gateway):
        answers = asyncio.run(flood(url, headers))
        statuses = [status for status, _ in answers]
        assert set(statuses) <= {200, 503}, {s: statuses.count(s) for s in set(statuses)}
        assert statuses.count(200) >= 256  # at least a full queue's worth is served
        assert all(retry is not None and int(retry) >= 1 for status, retry in answers if status == 503)
        assert httpx.get(f"{url}/health").status_code == 200
        assert httpx.post(f"{url}/v1/rerank", json={"query": "after", "documents": ["a"]},
                          headers=headers).status_code == 200


def test_security_headers_cors_closed_and_no_stack_traces(server: str, gateway: str) -> None:
    for url, headers in both(server, gateway):
        response = httpx.post(url + "/v1/rerank", json={"query": "q", "documents": ["a"]}, headers=headers)
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in response.headers["content-security-policy"]
        preflight = httpx.options(url + "/v1/rerank", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in preflight.headers
        cross = httpx.post(url + "/v1/rerank", json={"query": "q", "documents": ["a"]},
                           headers={**headers, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in cross.headers
        missing = httpx.get(url + "/no/such/route", headers=headers)
        assert_clear_error(missing, 404, "Not Found")


def schemathesis_run(url: str, *headers: str) -> tuple[int, str]:
    """Run schemathesis against ``url``'s OpenAPI; return (generated cases, output)."""
    binary = shutil.which("st") or str(Path(sys.executable).with_name("st"))
    if not Path(binary).exists():
        pytest.skip("schemathesis is not installed")
    command = [binary, "run", f"{url}/openapi.json", "--checks",
               "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
               "--max-examples", "60", "--seed", "20261124", "--request-timeout", "60", "--no-color",
               "--exclude-path", "/admin/keys/{name_or_id}"]
    for header in headers:
        command += ["-H", header]
    result = subprocess.run(command, capture_output=True, text=True, timeout=280)
    output = result.stdout + result.stderr
    match = re.search(r"(\d+) generated", output)
    assert match, output[-3000:]
    assert result.returncode == 0, output[-6000:]
    return int(match.group(1)), output


def test_schemathesis_finds_nothing_on_the_server(server: str) -> None:
    generated, output = schemathesis_run(server)
    assert generated >= 500, output[-2000:]


def test_schemathesis_finds_nothing_on_the_gateway(gateway: str) -> None:
    generated, output = schemathesis_run(gateway, f"Authorization: Bearer {ADMIN}")
    assert generated >= 500, output[-2000:]
