"""DingTalk signing, URL redaction and the retry verdicts of the robot sender."""

from __future__ import annotations

import base64
import hashlib
import hmac
import urllib.parse

import httpx
import pytest

from rerankd.observability.alert_delivery import (
    DeliveryError,
    Robot,
    RobotSender,
    dingtalk_sign,
    dingtalk_signed_url,
    redact_url,
)


def test_dingtalk_sign_matches_the_documented_recipe() -> None:
    secret, ts = "SEC0123456789abcdef", 1732456789123
    digest = hmac.new(secret.encode(), f"{ts}\n{secret}".encode(), hashlib.sha256).digest()
    assert dingtalk_sign(secret, ts) == urllib.parse.quote(base64.b64encode(digest).decode(), safe="")
    assert urllib.parse.unquote_plus(dingtalk_sign(secret, ts)) == base64.b64encode(digest).decode()


def test_dingtalk_sign_escapes_base64_specials() -> None:
    # Search a timestamp whose signature holds '+', '/' or '=' and check none is left raw.
    for ts in range(1_700_000_000_000, 1_700_000_000_200):
        raw = base64.b64encode(hmac.new(b"s", f"{ts}\ns".encode(), hashlib.sha256).digest()).decode()
        if "+" in raw or "/" in raw:
            signed = dingtalk_sign("s", ts)
            assert "+" not in signed and "/" not in signed and "=" not in signed
            return
    pytest.fail("no timestamp produced a signature with '+' or '/'")


def test_signed_url_appends_to_an_existing_query_or_starts_one() -> None:
    with_token = dingtalk_signed_url("https://oapi.dingtalk.com/robot/send?access_token=abc", "s", 1)
    assert with_token.startswith("https://oapi.dingtalk.com/robot/send?access_token=abc&timestamp=1&sign=")
    assert dingtalk_signed_url("http://h/robot", "s", 1).startswith("http://h/robot?timestamp=1&sign=")


def test_redact_url_hides_every_query_value() -> None:
    url = "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=secret-key-1&debug=1"
    assert redact_url(url) == "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=***&debug=***"
    assert redact_url("http://h/path") == "http://h/path"
    shown = repr(Robot("dingtalk", "http://h/?access_token=zq81", "SECzq82"))
    assert "zq81" not in shown and "zq82" not in shown and "access_token=***" in shown


def _sender(handler: httpx.MockTransport, attempts: int = 3) -> tuple[RobotSender, list[float]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    client = httpx.AsyncClient(transport=handler)
    return RobotSender(client, attempts=attempts, backoff=0.5, clock_ms=lambda: 42, sleep=sleep), slept


async def test_5xx_is_retried_with_backoff_then_succeeds() -> None:
    answers = iter([httpx.Response(503), httpx.Response(502), httpx.Response(200, json={"errcode": 0})])
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(answers)

    sender, slept = _sender(httpx.MockTransport(handle))
    await sender.send(Robot("dingtalk", "http://robot/send?access_token=t", "sec"), {"msgtype": "markdown"})
    assert len(seen) == 3 and slept == [0.5, 1.0]
    assert seen[0].url.params["timestamp"] == "42" and seen[0].url.params["access_token"] == "t"


async def test_robot_error_code_is_a_failure_without_retry_and_hides_the_token() -> None:
    calls = []

    def handle(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json={"errcode": 310000, "errmsg": "sign not match"})

    sender, _ = _sender(httpx.MockTransport(handle))
    with pytest.raises(DeliveryError) as info:
        await sender.send(Robot("wecom", "http://robot/send?key=k-secret"), {})
    assert len(calls) == 1
    assert "errcode=310000" in str(info.value) and "k-secret" not in str(info.value)


async def test_4xx_is_not_retried_and_connection_errors_are() -> None:
    sender, slept = _sender(httpx.MockTransport(lambda r: httpx.Response(404)))
    with pytest.raises(DeliveryError, match="HTTP 404"):
        await sender.send(Robot("wecom", "http://robot/send?key=k"), {})
    assert slept == []

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot reach {request.url}", request=request)

    sender, slept = _sender(httpx.MockTransport(refuse), attempts=2)
    with pytest.raises(DeliveryError, match="ConnectError") as info:
        await sender.send(Robot("wecom", "http://robot/send?key=k-secret"), {})
    assert slept == [0.5] and "k-secret" not in str(info.value)
