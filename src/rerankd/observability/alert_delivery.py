"""Delivery of one rendered message to a DingTalk or WeCom group robot: signing, retries, verdict.

Both robots answer HTTP 200 even when they refuse a message; the verdict is in the JSON body
(``{"errcode": 0, "errmsg": "ok"}``), so a 200 alone is not success. Robot URLs carry their secret
(``access_token`` / ``key``) in the query string: they are logged only through :func:`redact_url`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx

__all__ = ["DeliveryError", "Robot", "RobotSender", "dingtalk_sign", "dingtalk_signed_url", "redact_url"]

log = logging.getLogger("rerankd.alert_relay")

RobotKind = Literal["dingtalk", "wecom"]


@dataclass(frozen=True)
class Robot:
    """One group robot: its webhook URL and, for DingTalk's "sign" security setting, the secret."""

    kind: RobotKind
    url: str
    secret: str | None = None

    def __repr__(self) -> str:  # dataclass repr would print the URL token and the secret
        return f"Robot(kind={self.kind!r}, url={redact_url(self.url)!r}, signed={bool(self.secret)})"


class DeliveryError(Exception):
    """The robot did not accept the message after every attempt. The message is safe to log."""


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's signature: HMAC-SHA256 of ``"{timestamp}\\n{secret}"`` keyed by the secret,
    base64-encoded, then URL-encoded (``+``, ``/``, ``=`` escaped) for the query string."""
    digest = hmac.new(secret.encode("utf-8"), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return urllib.parse.quote_plus(base64.b64encode(digest).decode("ascii"))


def dingtalk_signed_url(url: str, secret: str, timestamp_ms: int) -> str:
    """The robot URL with ``&timestamp=…&sign=…`` appended (``?`` if the URL has no query yet)."""
    joiner = "&" if urllib.parse.urlsplit(url).query else "?"
    return f"{url}{joiner}timestamp={timestamp_ms}&sign={dingtalk_sign(secret, timestamp_ms)}"


def redact_url(url: str) -> str:
    """The URL with every query value replaced by ``***``: robot tokens never reach a log line."""
    parts = urllib.parse.urlsplit(url)
    if not parts.query:
        return url
    keys = [k for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
    return urllib.parse.urlunsplit(parts._replace(query="&".join(f"{k}=***" for k in keys)))


def _scrub(text: str, robot: Robot) -> str:
    """``text`` with the robot's token(s) and secret masked: error messages may quote the URL."""
    query = urllib.parse.urlsplit(robot.url).query
    for value in [v for _, v in urllib.parse.parse_qsl(query)] + ([robot.secret] if robot.secret else []):
        if value:
            text = text.replace(value, "***")
    return text


def _retryable_status(status: int) -> bool:
    return status >= 500 or status == 429


class RobotSender:
    """Sends JSON messages to robots, retrying what may succeed on a second try.

    Retried: connection errors, timeouts, HTTP 5xx and 429, with exponential backoff. Not retried:
    other 4xx and robot error codes (bad token, bad signature, message refused, rate limit per minute):
    another try a second later would fail the same way, and Alertmanager retries the whole
    notification later anyway when the relay answers non-2xx.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        attempts: int = 3,
        backoff: float = 0.5,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self._client = client
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._clock_ms = clock_ms
        self._sleep = sleep

    async def send(self, robot: Robot, body: dict[str, Any]) -> None:
        """Deliver ``body`` or raise :class:`DeliveryError` saying why (without secrets)."""
        where = redact_url(robot.url)
        last = "no attempt made"
        for attempt in range(1, self._attempts + 1):
            # Sign per attempt: DingTalk refuses timestamps more than an hour from its clock.
            url = dingtalk_signed_url(robot.url, robot.secret, self._clock_ms()) if robot.secret else robot.url
            try:
                response = await self._client.post(url, json=body)
            except httpx.HTTPError as exc:
                last = _scrub(f"{type(exc).__name__}: {exc}", robot)
                retry = True
            else:
                retry, last = self._judge(response)
                if last == "":
                    log.info("alert delivered", extra={"robot": robot.kind, "url": where, "attempt": attempt})
                    return
            if not retry or attempt == self._attempts:
                break
            log.warning("alert delivery failed, retrying",
                        extra={"robot": robot.kind, "url": where, "attempt": attempt, "error": last})
            await self._sleep(self._backoff * 2 ** (attempt - 1))
        log.error("alert delivery failed", extra={"robot": robot.kind, "url": where, "error": last})
        raise DeliveryError(f"{robot.kind} robot {where}: {last}")

    @staticmethod
    def _judge(response: httpx.Response) -> tuple[bool, str]:
        """``(retry, error)``; ``error == ""`` means the robot accepted the message."""
        if response.status_code != 200:
            return _retryable_status(response.status_code), f"HTTP {response.status_code}"
        try:
            answer = response.json()
        except ValueError:
            return False, "HTTP 200 with a body that is not JSON"
        code = answer.get("errcode") if isinstance(answer, dict) else None
        if code == 0:
            return False, ""
        message = answer.get("errmsg", "") if isinstance(answer, dict) else ""
        return False, f"robot refused the message: errcode={code} errmsg={message}"
