"""What a hostile client can do at the HTTP edge, tried on real processes over raw sockets.

Mostly on a real ``rerankd gateway`` (its upstream need not exist: /health and /admin answer without one),
started with tiny timeouts so each attack is cut in well under a second; then one check each on a real
``rerankd serve`` and ``rerankd alert-relay``. Each attack is observed from the attacker's side: the status
the server answered, and the end of the connection (EOF), waited for with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support import Proc, free_port, process_env, spawn_gateway, spawn_replica

pytestmark = pytest.mark.timeout(180)

ADMIN = "edge-admin-key"
HEADER_TIMEOUT, IDLE_TIMEOUT, BODY_TIMEOUT, BODY_DEADLINE, MAX_IN_FLIGHT = 0.5, 0.5, 2.0, 3.0, 3
EDGE_FLAGS = ("--header-timeout", str(HEADER_TIMEOUT), "--idle-timeout", str(IDLE_TIMEOUT))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("edge")
    proc = spawn_gateway(tmp, ["http://127.0.0.1:9"], "--database-url", f"sqlite:///{tmp / 'gw.db'}",
                         "--admin-key", ADMIN, *EDGE_FLAGS, "--body-timeout", str(BODY_TIMEOUT),
                         "--body-deadline", str(BODY_DEADLINE), "--max-concurrent-requests", str(MAX_IN_FLIGHT))
    try:
        yield proc.wait_ready(60, path="/health")
    finally:
        proc.stop(signal.SIGKILL)


def exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[bytes, float]:
    """Send ``data`` on a fresh connection (a send the server cuts short is part of the attack), read until
    the server closes; the bytes answered and the seconds until EOF. Fails if the server never closes."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        answer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            except TimeoutError:
                raise AssertionError(f"the server kept the connection open {timeout} s: {answer[:200]!r}") from None
            if not chunk:
                break
            answer += chunk
    return answer, time.monotonic() - started


def status_and_error(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body).get("error", {}) if body else {}


def big_head(header_bytes: int) -> bytes:
    return b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * header_bytes + b"\r\n\r\n"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# ---------------------------------------------------------------- headers


def test_an_oversized_header_is_431_at_once_and_the_connection_closed(gateway: Proc) -> None:
    answer, seconds = exchange(gateway.port, big_head(256 * 1024))
    status, error = status_and_error(answer)
    assert status == 431 and error["type"] == "headers_too_large" and "32768 bytes" in str(error["message"])
    assert b"connection: close" in answer.lower()
    assert seconds < 5


def test_20000_header_lines_and_a_few_hundred_short_ones_are_431(gateway: Proc) -> None:
    many, _ = exchange(gateway.port, b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 20_000 + b"\r\n")
    assert status_and_error(many)[0] == 431
    few, _ = exchange(gateway.port, b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 150 + b"\r\n")
    status, error = status_and_error(few)
    assert status == 431 and "100 header lines" in str(error["message"])
    fine, _ = exchange(gateway.port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                       + b"X-A: b\r\n" * 90 + b"\r\n")
    assert status_and_error(fine)[0] == 200


def test_four_16_mb_headers_at_once_do_not_grow_the_process(gateway: Proc) -> None:
    """The head is capped while it arrives: what the client sends past 32 KiB is read and dropped."""
    pid = gateway.popen.pid  # type: ignore[union-attr]
    before = rss_bytes(pid)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, rss_bytes(pid))
            done.wait(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    senders = [threading.Thread(target=exchange, args=(gateway.port, big_head(16 * 1024 * 1024), 30))
               for _ in range(4)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    done.set()
    sampler.join()
    assert peak - before < 16 * 1024 * 1024, f"RSS grew {(peak - before) / 2**20:.0f} MiB under 64 MiB of headers"


async def test_200_connections_dripping_headers_are_closed_by_the_header_timeout(gateway: Proc) -> None:
    connected = 0
    all_connected = asyncio.Event()

    async def drip() -> bytes:
        nonlocal connected
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Drip: ")
        connected += 1
        if connected == 200:
            all_connected.set()

        async def feed() -> None:
            try:
                while True:
                    writer.write(b"a")  # the attack's pace, not a wait for an event
                    await writer.drain()
                    await asyncio.sleep(0.1)
            except (OSError, RuntimeError):
                return

        feeder = asyncio.create_task(feed())
        try:
            return await asyncio.wait_for(reader.read(), 20)  # until the server closes
        finally:
            feeder.cancel()
            writer.close()

    attackers = asyncio.gather(*(drip() for _ in range(200)))
    await asyncio.wait_for(all_connected.wait(), 20)
    async with httpx.AsyncClient() as client:
        started = time.monotonic()
        health = await client.get(gateway.url + "/health", timeout=5)
        assert health.status_code == 200 and time.monotonic() - started < 2
    answers = await attackers
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), {a[:40] for a in answers}
    assert b"--header-timeout" in answers[0]


def test_a_connection_that_sends_nothing_is_closed(gateway: Proc) -> None:
    answer, seconds = exchange(gateway.port, b"")
    assert answer == b"" and seconds < 3


def test_an_idle_keep_alive_connection_is_closed(gateway: Proc) -> None:
    answer, seconds = exchange(gateway.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 ") and seconds < 3  # uvicorn's own default is 5 s


# ---------------------------------------------------------------- bodies and requests in flight


async def trickle(port: int, head: bytes, stop: asyncio.Event | None = None) -> tuple[bytes, float]:
    """Send ``head``, then a body byte every 0.2 s (inside --body-timeout) until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    writer.write(head)

    async def feed() -> None:
        try:
            while stop is None or not stop.is_set():
                writer.write(b"a")
                await writer.drain()
                await asyncio.sleep(0.2)
            writer.close()
        except (OSError, RuntimeError):
            return

    feeder = asyncio.create_task(feed())
    try:
        answer = await asyncio.wait_for(reader.read(), BODY_DEADLINE + 10)
    finally:
        feeder.cancel()
        writer.close()
    return answer, time.monotonic() - started


def admin_post(length: int) -> bytes:
    return (f"POST /admin/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode() + b'{"name": "'


async def test_a_body_trickled_a_byte_at_a_time_is_cut_at_the_body_deadline(gateway: Proc) -> None:
    answer, seconds = await trickle(gateway.port, admin_post(100_000))
    status, error = status_and_error(answer)
    assert status == 408 and "--body-deadline" in str(error["message"]), answer[:300]
    assert BODY_DEADLINE - 0.5 < seconds < BODY_DEADLINE + 5


async def test_a_body_nobody_reads_is_cut_at_the_body_deadline_too(gateway: Proc) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    answer, seconds = await trickle(gateway.port, head)
    assert answer.startswith(b"HTTP/1.1 200 ")  # /health answered, then the connection closed at the deadline
    assert BODY_DEADLINE - 0.5 < seconds < BODY_DEADLINE + 5


async def test_past_max_concurrent_requests_a_request_gets_503_and_probes_still_answer(gateway: Proc) -> None:
    stop = asyncio.Event()
    holders = [asyncio.create_task(trickle(gateway.port, admin_post(100_000), stop)) for _ in range(MAX_IN_FLIGHT)]
    try:
        async with httpx.AsyncClient(base_url=gateway.url, headers={"Authorization": f"Bearer {ADMIN}"}) as client:
            deadline = time.monotonic() + BODY_DEADLINE - 0.5
            refused = None
            while refused is None and time.monotonic() < deadline:  # until all three holders are in flight
                answer = await client.get("/admin/keys")
                if answer.status_code == 503:
                    refused = answer
            assert refused is not None, "never refused while the holders were in flight"
            assert refused.json()["error"]["type"] == "overloaded" and refused.headers["retry-after"] == "1"
            assert "--max-concurrent-requests" in refused.json()["error"]["message"]
            assert (await client.get("/health")).status_code == 200
    finally:
        stop.set()
        await asyncio.gather(*holders, return_exceptions=True)


# ---------------------------------------------------------------- headers that must not be trusted or repeated


def test_a_trailing_slash_is_a_404_never_a_redirect_to_the_clients_host(gateway: Proc) -> None:
    answer = httpx.post(gateway.url + "/v1/rerank/", json={"query": "q", "documents": ["a"]},
                        headers={"Host": "evil.example.com"})
    assert answer.status_code == 404 and "location" not in answer.headers
    assert "try /v1/rerank" in answer.json()["error"]["message"]


def test_two_host_headers_are_400(gateway: Proc) -> None:
    answer, _ = exchange(gateway.port, b"GET /health HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n")
    status, error = status_and_error(answer)
    assert status == 400 and "send one Host header" in str(error["message"])


def test_two_authorization_headers_are_400(gateway: Proc) -> None:
    answer = httpx.get(gateway.url + "/admin/keys",
                       headers=[("Authorization", f"Bearer {ADMIN}"), ("Authorization", "Bearer other")])
    assert answer.status_code == 400 and "send one Authorization header" in answer.json()["error"]["message"]


def test_a_validation_bomb_is_413_before_validation(gateway: Proc) -> None:
    # 200,000 empty documents (0.6 MB): validating them all took the gateway's event loop seconds.
    key = httpx.post(f"{gateway.url}/admin/keys", json={"name": "bomb"},
                     headers={"Authorization": f"Bearer {ADMIN}"}).json()["key"]
    bomb = {"query": "q", "documents": [{}] * 200_000}
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        started = time.monotonic()
        answer = client.post("/v1/rerank", json=bomb, headers={"Authorization": f"Bearer {key}"})
        took = time.monotonic() - started
    assert answer.status_code == 413 and "documents" in answer.json()["error"]["message"], answer.text
    assert took < 1.5, took  # the counting parser stops after --max-documents + 1 items


def test_x_forwarded_for_from_an_untrusted_peer_is_not_the_audited_client(gateway: Proc) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    created = httpx.post(gateway.url + "/admin/keys", json={"name": "forged-origin"},
                         headers={**admin, "X-Forwarded-For": "203.0.113.9"})
    assert created.status_code == 201, created.text
    events = httpx.get(gateway.url + "/admin/audit", headers=admin).json()
    (event,) = [e for e in events if e["target"] == "forged-origin"]
    assert event["client"] == "127.0.0.1"


def test_x_forwarded_for_from_a_configured_proxy_is_the_audited_client(tmp_path: Path) -> None:
    proxied = spawn_gateway(tmp_path, ["http://127.0.0.1:9"], "--database-url", f"sqlite:///{tmp_path / 'gw.db'}",
                            "--admin-key", ADMIN, "--forwarded-allow-ips", "127.0.0.1")
    try:
        proxied.wait_ready(60, path="/health")
        admin = {"Authorization": f"Bearer {ADMIN}"}
        created = httpx.post(proxied.url + "/admin/keys", json={"name": "via-proxy"},
                             headers={**admin, "X-Forwarded-For": "203.0.113.9"})
        assert created.status_code == 201, created.text
        (event,) = [e for e in httpx.get(proxied.url + "/admin/audit", headers=admin).json()
                    if e["target"] == "via-proxy"]
        assert event["client"] == "203.0.113.9"
    finally:
        proxied.stop(signal.SIGKILL)


# ---------------------------------------------------------------- the server and the relay


def test_the_server_caps_headers_and_never_redirects(tiny_model_dir: Path, tmp_path: Path) -> None:
    server = spawn_replica(tiny_model_dir, tmp_path, *EDGE_FLAGS)
    try:
        server.wait_ready(120, path="/health")  # served while the model loads
        answer, _ = exchange(server.port, big_head(64 * 1024))
        assert status_and_error(answer)[0] == 431
        slash = httpx.post(server.url + "/v1/rerank/", json={"query": "q", "documents": ["a"]})
        assert slash.status_code == 404 and "location" not in slash.headers
    finally:
        server.stop(signal.SIGKILL)


def test_the_relay_caps_headers_and_times_out_slow_ones(tmp_path: Path) -> None:
    port = free_port()
    relay = Proc(["alert-relay", "--wecom-url", "http://127.0.0.1:9/robot"], port, tmp_path / "relay.log",
                 process_env()).start()
    try:
        relay.wait_ready(60, path="/health")
        answer, _ = exchange(port, big_head(64 * 1024))
        assert status_and_error(answer)[0] == 431
        slash = httpx.post(relay.url + "/alerts/", json={})
        assert slash.status_code == 404 and "location" not in slash.headers
        two_hosts, _ = exchange(port, b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        assert status_and_error(two_hosts)[0] == 400
    finally:
        relay.stop(signal.SIGKILL)
