"""uvicorn's httptools protocol with the limits it lacks: head size, header count, head time, body time.

Why a protocol and not middleware: by the time an ASGI app is called, uvicorn has parsed (and buffered)
every header, and httptools caps nothing: a 64 MB header was accepted, and a connection that never
finishes its headers was held forever. Here the head is counted while it arrives and refused once it
passes ``max_header_bytes`` (bytes fed to the parser are capped, so no more than that is ever buffered)
or ``max_header_lines``; a head that takes longer than ``header_timeout`` is refused with 408.

The whole-body deadline is the ASGI layer's (:mod:`rerankd.http.body_limits` answers 408 in JSON while the
app reads); this protocol only backs it up for a body nobody reads (a GET that trickles one), closing the
connection a little after the same deadline.

A refusal is a small JSON answer (:func:`~rerankd.http.errors.error_body`) written straight to the socket,
then a lingering close: the write side is shut and whatever the client still sends is discarded for a
moment, so the client reads the answer instead of a reset.
"""

from __future__ import annotations

import asyncio
import http
import json
import logging
from asyncio import TimerHandle
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from rerankd.edge_settings import EdgeSettings
from rerankd.http.errors import error_body

__all__ = ["EdgeProtocol", "edge_protocol"]

log = logging.getLogger(__name__)

LINGER_SECONDS = 2.0  # how long a refused client may keep sending before the socket is closed outright
BODY_GRACE_SECONDS = 1.0  # the ASGI layer answers at the body deadline; this closes what it did not see


class EdgeProtocol(HttpToolsProtocol):
    """One connection: uvicorn's parsing and ASGI cycle, with the head and the body bounded."""

    limits: ClassVar[EdgeSettings] = EdgeSettings()  # :func:`edge_protocol` binds the process's limits

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._reading_head = True  # the next bytes belong to a request line or headers
        self._message_begun = False
        self._head_bytes = 0
        self._head_lines = 0
        self._refused = False
        self._head_timer: TimerHandle | None = None
        self._body_timer: TimerHandle | None = None

    # ---------------------------------------------------------------- connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never sends a byte is held by nothing else: uvicorn's keep-alive timer starts
        # only after a first response.
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_too_slow)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser no more head than the cap allows, so an oversized head is never buffered."""
        cap = self.limits.max_header_bytes
        while data and not self._refused and not self.transport.is_closing():
            if not self._reading_head:
                super().data_received(data)
                return
            chunk, data = data[:cap - self._head_bytes], data[cap - self._head_bytes:]
            self._head_bytes += len(chunk)
            super().data_received(chunk)
            if self._reading_head and self._head_bytes >= cap and not self._refused:
                self._refuse(431, f"request line and headers exceed {cap} bytes; send smaller headers "
                                  "(see --max-header-bytes)")

    # ---------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._message_begun = True
        self._head_lines = 0
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_too_slow)

    def on_url(self, url: bytes) -> None:
        if not self._refused:
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._refused:
            return
        self._head_lines += 1
        if self._head_lines > self.limits.max_header_lines:
            self._refuse(431, f"more than {self.limits.max_header_lines} header lines; send fewer headers "
                              "(see --max-header-lines)")
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._refused:
            return
        self._reading_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self._body_timer = self.loop.call_later(self.limits.body_deadline + BODY_GRACE_SECONDS, self._body_too_slow)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._refused:
            return
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._reading_head, self._message_begun, self._head_bytes = True, False, 0
        super().on_message_complete()

    # ---------------------------------------------------------------- refusals

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if not self._message_begun:  # connected and said nothing (or idle between requests): just hang up
            self.transport.close()
            return
        self._refuse(408, f"request headers not received within {self.limits.header_timeout:g} s "
                          "(see --header-timeout)")

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        self._refuse(408, f"request body not received within {self.limits.body_deadline:g} s "
                          "(see --body-deadline)")

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` (unless a response is already on the wire) and close after a short linger."""
        if self._refused:
            return
        self._refused = True
        self._cancel_timers()
        log.info("refused a connection from %s: %s", self.client[0] if self.client else "?", message)
        if self.cycle is None or not self.cycle.response_started:
            self.transport.write(self._raw_response(status, message))
        if self.cycle is not None and not self.cycle.response_complete:
            # The app still working on this connection sees a disconnect, and writes nothing more to it.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def _raw_response(self, status: int, message: str) -> bytes:
        body = json.dumps(error_body(status, message)).encode()
        lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}".encode()]
        lines += [name + b": " + value for name, value in self.server_state.default_headers]
        lines += [b"content-type: application/json", b"content-length: " + str(len(body)).encode(),
                  b"x-content-type-options: nosniff", b"connection: close"]
        return b"\r\n".join(lines) + b"\r\n\r\n" + body

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None


def edge_protocol(limits: EdgeSettings) -> type[EdgeProtocol]:
    """The protocol class uvicorn builds for each connection, with ``limits`` bound (uvicorn passes each
    protocol only its own ``Config``)."""
    return type("BoundEdgeProtocol", (EdgeProtocol,), {"limits": limits})
