"""Traces across the fleet, received over real OTLP from real processes: a gateway and two replicas.

A split 1000-document request sent with a client's ``traceparent`` must come back as ONE trace (the client's
trace id kept): the gateway's request span, a ``gateway.split.part`` child per part, each part's attempt at a
replica, and the replica's own spans (its request, tokenization, queue wait, batches) under that attempt.
The processes export with the SDK's batch processor on a short schedule; the test waits on the receiver.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from otlp_receiver import OtlpReceiver, ReceivedSpan, otlp_receiver
from support import Proc, spawn_gateway, spawn_replica

pytestmark = pytest.mark.timeout(480)  # three processes start: over 200 s on a loaded 2-core machine

ADMIN = "admin-secret-for-tracing-tests"
DOCS = 1000
SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SpanKind.SPAN_KIND_SERVER
CLIENT_KIND = 3


@pytest.fixture
def traced_fleet(tiny_model_dir: Path, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, OtlpReceiver, list[Proc]]]:
    """A receiver, two replicas and a gateway (splitting past 500 documents), all exporting to the receiver."""
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # milliseconds between the processes' exports
    with otlp_receiver() as (endpoint, receiver):
        procs = [spawn_replica(tiny_model_dir, tmp_path, "--otlp-endpoint", endpoint, "--max-model-len", "128")
                 for _ in range(2)]
        try:
            for replica in procs:
                replica.wait_ready(300)  # a loaded machine took over 120 s (support.Fleet.restart)
            gateway = spawn_gateway(tmp_path, [p.url for p in procs], "--database-url",
                                    f"sqlite:///{tmp_path / 'gw.db'}", "--admin-key", ADMIN, "--split-threshold",
                                    "500", "--otlp-endpoint", endpoint)
            procs.append(gateway)
            gateway.wait_ready()
            yield gateway.url, receiver, procs
        finally:
            for proc in procs:
                proc.stop()


def children(spans: list[ReceivedSpan], parent: ReceivedSpan, name: str) -> list[ReceivedSpan]:
    return [s for s in spans if s.parent_id == parent.span_id and s.name == name]


def test_a_split_request_is_one_trace_with_a_span_per_part_and_the_replicas_spans_under_them(
        traced_fleet: tuple[str, OtlpReceiver, list[Proc]]) -> None:
    gateway, receiver, procs = traced_fleet
    created = httpx.post(f"{gateway}/admin/keys", json={"name": "traced-user"},
                         headers={"Authorization": f"Bearer {ADMIN}"})
    assert created.status_code == 201, created.text
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    response = httpx.post(f"{gateway}/v1/rerank", timeout=120, headers={
        "Authorization": f"Bearer {created.json()['key']}", "traceparent": f"00-{trace_id}-{client_span}-01"},
        json={"query": "which fruit is red", "documents": [f"doc {i} apples" for i in range(DOCS)], "top_n": 3})
    assert response.status_code == 200, response.text
    request_id = response.headers["x-request-id"]

    def whole_trace(spans: list[ReceivedSpan]) -> bool:
        mine = [s for s in spans if s.trace_id == trace_id]
        return (sum(s.name == "POST /v1/rerank" and s.service == "rerankd-server" for s in mine) == 2
                and sum(s.name == "rerankd.batch" for s in mine) >= 2
                and any(s.name == "POST /v1/rerank" and s.service == "rerankd-gateway" for s in mine))

    receiver.wait_for(whole_trace, 60, "the gateway's and both replicas' spans of the request")
    receiver.wait_for(lambda spans: any(s.name == "gateway.ledger.write" for s in spans), 30, "the ledger write")
    spans = [s for s in receiver.spans if s.trace_id == trace_id]

    # The gateway continued the client's trace: its request span is the child of the client's span.
    (root,) = [s for s in spans if s.service == "rerankd-gateway" and s.kind == SERVER_KIND]
    assert root.parent_id == client_span
    assert root.attributes["rerankd.request_id"] == request_id
    assert root.attributes["http.response.status_code"] == 200
    assert root.resource["service.namespace"] == "rerankd"
    for step in ("gateway.authenticate", "gateway.rate_limit", "gateway.rate_limit.settle", "gateway.ledger.record"):
        assert len(children(spans, root, step)) == 1, step
    assert children(spans, root, "gateway.authenticate")[0].attributes["rerankd.auth.kind"] == "key"

    # One split span, one child per part with its slice, each part's attempt at its own replica.
    (split,) = children(spans, root, "gateway.split")
    assert split.attributes["rerankd.split.parts"] == 2
    parts = sorted(children(spans, split, "gateway.split.part"), key=lambda s: s.attributes["rerankd.split.part"])
    assert [(p.attributes["rerankd.split.start"], p.attributes["rerankd.split.end"]) for p in parts] == [
        (0, 500), (500, 1000)]
    replica_instances = set()
    for part in parts:
        (attempt,) = children(spans, part, "gateway.attempt")
        assert attempt.kind == CLIENT_KIND
        assert attempt.attributes["rerankd.attempt"] == 1
        assert attempt.attributes["http.response.status_code"] == 200
        # The replica continued the attempt's traceparent: its request span is the attempt's child.
        (served,) = children(spans, attempt, "POST /v1/rerank")
        assert served.service == "rerankd-server" and served.kind == SERVER_KIND
        assert served.resource["rerankd.model"] == "tiny-reranker"
        assert served.resource["service.instance.id"].endswith(attempt.attributes["rerankd.upstream"].rsplit(":", 1)[1])
        assert attempt.attributes["url.full"] == attempt.attributes["rerankd.upstream"] + "/v1/rerank"
        replica_instances.add(served.resource["service.instance.id"])
        assert served.attributes["rerankd.request_id"] == f"{request_id}.p{part.attributes['rerankd.split.part']}"
        (tokenize,) = children(spans, served, "rerankd.tokenize")
        assert tokenize.attributes["rerankd.documents"] == 500
        assert len(children(spans, served, "rerankd.queue_wait")) == 1
        batches = children(spans, served, "rerankd.batch")
        assert batches and sum(b.attributes["rerankd.batch.rows"] for b in batches) == 500
    assert len(replica_instances) == 2  # the parts went to the two replicas

    # Every span of the request, from all three processes, is in this one trace.
    assert not [s for s in receiver.spans if s.trace_id != trace_id
                and s.name in ("gateway.split", "gateway.split.part", "rerankd.batch", "rerankd.tokenize")]
    (write,) = [s for s in receiver.spans if s.name == "gateway.ledger.write"][:1]
    assert write.attributes["rerankd.ledger.rows"] >= 1 and write.attributes["db.system.name"] == "sqlite"

    # The JSON logs carry the trace: the gateway's access line for the request, and each replica's for its part.
    for proc, rid in ((procs[2], request_id), (procs[0], None), (procs[1], None)):
        lines = [json.loads(line) for line in proc.log_path.read_text().splitlines() if line.startswith("{")]
        access = [line for line in lines if line.get("logger") == "rerankd.access" and line.get("route") == "/v1/rerank"
                  and (rid is None or line.get("request_id") == rid)]
        assert access and all(line.get("trace_id") == trace_id for line in access), proc.log_path
