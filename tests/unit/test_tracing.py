"""Tracing off costs nothing and changes nothing; `--otlp-endpoint` is checked like every other flag.

The spans themselves, their tree and their export are tested end to end with real processes
(tests/integration/test_tracing.py); this is the switch.
"""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from rerankd.gateway.settings import GatewaySettings
from rerankd.observability import tracing
from rerankd.observability.logging import JsonFormatter
from rerankd.server.settings import ServerSettings


def test_off_every_instrumented_line_is_the_same_null_context_and_no_header() -> None:
    assert not tracing.enabled()
    assert tracing.span("a") is tracing.span("b", attributes={"x": 1})  # one shared object: nothing built
    with tracing.span("a") as current:
        assert current is None
        assert tracing.ids_of_current() is None
        headers: dict[str, str] = {}
        tracing.inject(headers)
        assert headers == {}
    assert tracing.current_context() is None


def test_a_log_line_has_no_trace_fields_while_off() -> None:
    record = logging.LogRecord("rerankd.access", logging.INFO, __file__, 1, "request", (), None)
    assert "trace_id" not in JsonFormatter().format(record)


def test_the_caller_traceparent_is_read_and_a_bad_one_starts_a_new_trace() -> None:
    from opentelemetry import trace

    given = tracing.extract("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", None)
    context = trace.get_current_span(given).get_span_context()
    assert (format(context.trace_id, "032x"), format(context.span_id, "016x")) == (
        "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    for bad in (None, "", "00-nothex-b7ad6b7169203331-01", "00-" + "0" * 32 + "-b7ad6b7169203331-01"):
        assert not trace.get_current_span(tracing.extract(bad, None)).get_span_context().is_valid


def test_a_bare_collector_address_gets_the_traces_path() -> None:
    assert tracing.traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert tracing.traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert tracing.traces_url("https://c.example/otlp/v1/traces") == "https://c.example/otlp/v1/traces"


@pytest.mark.parametrize("bad", ["collector:4318", "grpc://collector:4317", "http://", "ftp://c:21"])
def test_a_bad_endpoint_is_refused_by_serve_and_gateway_alike(bad: str) -> None:
    with pytest.raises(ValidationError, match="--otlp-endpoint"):
        ServerSettings(model="/m", otlp_endpoint=bad)
    with pytest.raises(ValidationError, match="--otlp-endpoint"):
        GatewaySettings(upstreams=["http://r:8000"], otlp_endpoint=bad)


def test_the_endpoint_is_off_by_default_and_blank_means_off() -> None:
    assert ServerSettings(model="/m").otlp_endpoint is None
    assert GatewaySettings(upstreams=["http://r:8000"], otlp_endpoint="  ").otlp_endpoint is None
