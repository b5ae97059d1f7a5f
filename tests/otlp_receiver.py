"""A real OTLP/HTTP trace receiver for tests: an HTTP server on 127.0.0.1 that decodes what exporters send.

It speaks the protocol as a collector does (``POST /v1/traces``, an ``ExportTraceServiceRequest`` in
protobuf, gzip allowed; answered with an empty ``ExportTraceServiceResponse``), keeps every span with its
resource's attributes, and lets a test wait for the spans it expects by being told of each export: no sleeps.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

__all__ = ["OtlpReceiver", "ReceivedSpan", "otlp_receiver"]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind is not None else None


@dataclass(frozen=True)
class ReceivedSpan:
    """One decoded span: ids in hex (parent "" for a root), its name, kind, attributes and its process's."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status_code: int

    @property
    def service(self) -> str:
        return str(self.resource.get("service.name", ""))


class OtlpReceiver:
    """The spans received so far, and a way to wait for a condition on them."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.exports = 0
        self._changed = threading.Condition()

    def take(self, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        got = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    got.append(ReceivedSpan(
                        trace_id=s.trace_id.hex(), span_id=s.span_id.hex(), parent_id=s.parent_span_id.hex(),
                        name=s.name, kind=s.kind, attributes={a.key: _value(a.value) for a in s.attributes},
                        resource=resource, status_code=s.status.code))
        with self._changed:
            self.spans.extend(got)
            self.exports += 1
            self._changed.notify_all()

    def wait_for(self, condition: Callable[[list[ReceivedSpan]], bool], timeout: float, what: str) -> None:
        """Return once ``condition(spans)`` holds, re-checked at each export received; fail after ``timeout``."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(list(self.spans)), timeout):
                names = sorted({(s.service, s.name) for s in self.spans})
                raise AssertionError(f"{what}: not received within {timeout} s; got {len(self.spans)} spans: {names}")


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, OtlpReceiver]]:
    """A receiver listening on a free port; yields (its base URL, the receiver)."""
    receiver = OtlpReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            receiver.take(body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", receiver
    finally:
        server.shutdown()
        server.server_close()
