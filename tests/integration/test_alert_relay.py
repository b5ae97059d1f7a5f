"""`rerankd alert-relay` as a real process on 127.0.0.1, forwarding to a real HTTP robot stand-in.

The stand-in checks DingTalk's signature with its own copy of the secret, the way DingTalk does, and
answers the way the robots do (HTTP 200 + errcode), or fails on purpose when a test scripts it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

DINGTALK_TOKEN = "dt-token-5f1c0a"
DINGTALK_SECRET = "SEC-secret-9b2e4d"
WECOM_KEY = "wc-key-77aa3e"
RELAY_TOKEN = "relay-token-31c8"


@dataclass
class Received:
    path: str
    query: dict[str, str]
    body: dict[str, Any]
    signature_ok: bool | None  # None: not a DingTalk request


@dataclass
class RobotStandIn:
    """What the stand-in saw, and the answers it will give next (per path; default: errcode 0)."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    script: dict[str, deque[tuple[int, dict[str, Any]]]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer_next(self, path: str, *answers: tuple[int, dict[str, Any]]) -> None:
        with self.lock:
            self.script.setdefault(path, deque()).extend(answers)

    def take(self) -> list[Received]:
        with self.lock:
            got, self.received[:] = list(self.received), []
            return got


def _verify_dingtalk(query: dict[str, str]) -> bool:
    """DingTalk's check, written independently of the relay's code."""
    timestamp, sign = query.get("timestamp", ""), query.get("sign", "")
    if not timestamp.isdigit() or abs(time.time() * 1000 - int(timestamp)) > 3600_000:
        return False
    expected = base64.b64encode(
        hmac.new(DINGTALK_SECRET.encode(), f"{timestamp}\n{DINGTALK_SECRET}".encode(), hashlib.sha256).digest()
    ).decode()
    return hmac.compare_digest(sign, expected)


@pytest.fixture(scope="module")
def robots() -> Iterator[RobotStandIn]:
    state = RobotStandIn()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(parts.query))  # decodes %2B etc. like a real server
            body = json.loads(self.rfile.read(int(self.headers.get("content-length", "0"))) or b"{}")
            signed = _verify_dingtalk(query) if parts.path == "/dingtalk" else None
            with state.lock:
                state.received.append(Received(parts.path, query, body, signed))
                queue = state.script.get(parts.path)
                status, answer = queue.popleft() if queue else (200, {"errcode": 0, "errmsg": "ok"})
            if signed is False:
                status, answer = 200, {"errcode": 310000, "errmsg": "sign not match"}
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@dataclass
class Relay:
    url: str
    log_file: Path


@pytest.fixture(scope="module")
def relay(robots: RobotStandIn, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """The real CLI: secrets through the environment, as a Kubernetes Secret would pass them."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_file = tmp_path_factory.mktemp("relay") / "relay.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RERANKD_")}
    env.update({
        "RERANKD_DINGTALK_URL": robots.url(f"/dingtalk?access_token={DINGTALK_TOKEN}"),
        "RERANKD_DINGTALK_SECRET": DINGTALK_SECRET,
        "RERANKD_WECOM_URL": robots.url(f"/wecom?key={WECOM_KEY}"),
        "RERANKD_AUTH_TOKEN": RELAY_TOKEN,
    })
    proc = subprocess.Popen(
        [sys.executable, "-m", "rerankd.cli", "alert-relay", "--host", "127.0.0.1", "--port", str(port),
         "--timeout", "3", "--log-format", "json", "--log-level", "debug", "--log-file", str(log_file)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"alert-relay exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("alert-relay did not start")
        time.sleep(0.1)
    try:
        yield Relay(url, log_file)
    finally:
        proc.terminate()
        try:
            stderr = proc.communicate(timeout=15)[1].decode(errors="replace")
        except subprocess.TimeoutExpired:
            proc.kill()
            stderr = proc.communicate()[1].decode(errors="replace")
        # The banner and every log line name the robots; none may carry a token or the secret.
        for secret in (DINGTALK_TOKEN, DINGTALK_SECRET, WECOM_KEY, RELAY_TOKEN):
            assert secret not in stderr


def _notification(n_alerts: int = 1, description: str = "") -> dict[str, Any]:
    alerts = [{
        "status": "firing",
        "labels": {"alertname": "RerankdHighErrorRatio", "severity": "critical", "job": "rerankd-server",
                   "instance": f"s{i}:8000"},
        "annotations": {"summary": f"12% of s{i} scoring requests fail with 5xx", "description": description,
                        "runbook": "Split by status on the dashboard."},
        "startsAt": "2026-11-24T13:00:00Z", "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": "",
    } for i in range(n_alerts)]
    return {"version": "4", "status": "firing", "receiver": "oncall", "groupKey": "k", "truncatedAlerts": 0,
            "groupLabels": {"alertname": "RerankdHighErrorRatio"},
            "commonLabels": {"alertname": "RerankdHighErrorRatio", "severity": "critical", "job": "rerankd-server"},
            "commonAnnotations": {}, "externalURL": "http://alertmanager:9093", "alerts": alerts}


def _post(relay: Relay, path: str, body: dict[str, Any], token: str | None = RELAY_TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(relay.url + path, json=body, headers=headers, timeout=30)


def test_dingtalk_gets_a_signed_markdown_message(relay: Relay, robots: RobotStandIn) -> None:
    robots.take()
    response = _post(relay, "/alerts/dingtalk", _notification())
    assert response.status_code == 200, response.text
    assert response.json() == {"delivered": 1, "errors": []}
    [got] = robots.take()
    assert got.path == "/dingtalk" and got.query["access_token"] == DINGTALK_TOKEN
    assert got.signature_ok is True
    assert got.body["msgtype"] == "markdown"
    assert got.body["markdown"]["title"] == "[FIRING:1] RerankdHighErrorRatio"
    assert "12% of s0 scoring requests fail with 5xx" in got.body["markdown"]["text"]


def test_wecom_gets_markdown_within_4096_bytes(relay: Relay, robots: RobotStandIn) -> None:
    robots.take()
    response = _post(relay, "/alerts/wecom", _notification(40, description="错误率过高，请检查副本日志。" * 8))
    assert response.status_code == 200, response.text
    [got] = robots.take()
    assert got.path == "/wecom" and got.query == {"key": WECOM_KEY}
    content = got.body["markdown"]["content"]
    assert got.body["msgtype"] == "markdown" and len(content.encode("utf-8")) <= 4096
    assert "more alert(s)" in content


def test_alerts_route_fans_out_to_every_robot(relay: Relay, robots: RobotStandIn) -> None:
    robots.take()
    response = _post(relay, "/alerts", _notification())
    assert response.status_code == 200 and response.json()["delivered"] == 2
    assert sorted(r.path for r in robots.take()) == ["/dingtalk", "/wecom"]


def test_robot_5xx_is_retried_until_it_succeeds(relay: Relay, robots: RobotStandIn) -> None:
    robots.take()
    robots.answer_next("/dingtalk", (503, {}), (502, {}))
    response = _post(relay, "/alerts/dingtalk", _notification())
    assert response.status_code == 200, response.text
    got = robots.take()
    assert len(got) == 3 and all(r.signature_ok for r in got)  # every attempt signed afresh


def test_failed_delivery_answers_502_so_alertmanager_retries(relay: Relay, robots: RobotStandIn) -> None:
    robots.take()
    robots.answer_next("/wecom", (503, {}), (503, {}), (503, {}))
    response = _post(relay, "/alerts", _notification())
    assert response.status_code == 502
    body = response.json()
    assert body["delivered"] == 1 and len(body["errors"]) == 1
    assert "wecom" in body["errors"][0] and "HTTP 503" in body["errors"][0]
    assert WECOM_KEY not in response.text
    assert [r.path for r in robots.take()].count("/wecom") == 3


def test_robot_error_code_is_a_failure_without_retry(relay: Relay, robots: RobotStandIn) -> None:
    robots.take()
    robots.answer_next("/dingtalk", (200, {"errcode": 130101, "errmsg": "send too fast"}))
    response = _post(relay, "/alerts/dingtalk", _notification())
    assert response.status_code == 502 and "130101" in response.json()["errors"][0]
    assert len(robots.take()) == 1


def test_bearer_token_is_required(relay: Relay, robots: RobotStandIn) -> None:
    robots.take()
    assert _post(relay, "/alerts", _notification(), token=None).status_code == 401
    assert _post(relay, "/alerts", {"alerts": "not a list"}, token="wrong").status_code == 401
    assert robots.take() == []


def test_unknown_robot_kind_is_404_and_bad_bodies_422(relay: Relay) -> None:
    assert _post(relay, "/alerts/slack", _notification()).status_code == 404
    assert _post(relay, "/alerts", {"alerts": "not a list"}).status_code == 422


def test_metrics_count_deliveries_and_logs_hold_no_secret(relay: Relay, robots: RobotStandIn) -> None:
    robots.take()
    assert _post(relay, "/alerts/wecom", _notification()).status_code == 200
    text = httpx.get(relay.url + "/metrics", timeout=5).text
    samples = {(s.name, s.labels.get("robot"), s.labels.get("outcome")): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("rerankd_alert_relay_deliveries_total", "wecom", "delivered")] >= 1
    log = relay.log_file.read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]
    assert any(line["msg"] == "alert delivered" and line["robot"] == "wecom" for line in lines)
    for secret in (DINGTALK_TOKEN, DINGTALK_SECRET, WECOM_KEY, RELAY_TOKEN):
        assert secret not in log


def test_a_real_alertmanager_delivers_through_the_relay(
    relay: Relay, robots: RobotStandIn, tmp_path: Path,
) -> None:
    """Alertmanager's own webhook JSON and bearer token, end to end, to a signed DingTalk message."""
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("alertmanager is not installed; CI must install prometheus-alertmanager")
        pytest.skip("alertmanager is not installed (apt-get install prometheus-alertmanager)")
    robots.take()
    (tmp_path / "relay-token").write_text(RELAY_TOKEN)
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump({
        "route": {"receiver": "robots", "group_by": ["alertname"], "group_wait": "1s", "group_interval": "1s",
                  "repeat_interval": "1h"},
        "receivers": [{"name": "robots", "webhook_configs": [{
            "url": f"{relay.url}/alerts/dingtalk", "send_resolved": True,
            "http_config": {"authorization": {"credentials_file": str(tmp_path / "relay-token")}},
        }]}],
    }))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    am_url = f"http://127.0.0.1:{port}"
    with (tmp_path / "am.log").open("wb") as am_log:
        proc = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'alertmanager.yml'}", f"--storage.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=am_log, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{am_url}/-/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "am.log").read_text()
                time.sleep(0.1)
            alert = {"labels": {"alertname": "RerankdReplicaDown", "severity": "warning", "upstream": "http://s1:8000"},
                     "annotations": {"summary": "Replica http://s1:8000 fails health checks",
                                     "runbook": "Restart the replica."}}
            assert httpx.post(f"{am_url}/api/v2/alerts", json=[alert], timeout=5).status_code == 200
            got: list[Received] = []
            while not got and time.monotonic() < deadline + 30:
                got = robots.take()
                time.sleep(0.2)
        finally:
            proc.terminate()
            proc.wait(15)
    assert len(got) == 1, (tmp_path / "am.log").read_text()[-2000:]
    [message] = got
    assert message.path == "/dingtalk" and message.signature_ok is True
    assert message.body["markdown"]["title"] == "[FIRING:1] RerankdReplicaDown"
    assert "Replica http://s1:8000 fails health checks" in message.body["markdown"]["text"]
    assert "Runbook: Restart the replica." in message.body["markdown"]["text"]
