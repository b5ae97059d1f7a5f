"""What a replica answered, judged: the shapes a 200 may take, the error bodies a client may see, bounded labels."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from prometheus_client import generate_latest

from rerankd.errors import UpstreamMalformedError
from rerankd.gateway.answers import MAX_ERROR_MESSAGE_CHARS, AnswerShape, accept_answer, check_answer, safe_error_body
from rerankd.gateway.authenticate import Identity
from rerankd.gateway.charge import JWT_LABEL, KeyLabels, Outcome, UsageCharger
from rerankd.gateway.db import create_engine_for
from rerankd.gateway.ledger import UsageLedger
from rerankd.gateway.ratelimit import RateLimiter
from rerankd.observability.gateway_metrics import ALL_KEYS_LABEL, GatewayMetrics


@pytest.mark.parametrize(("shape", "answer"), [
    (AnswerShape.RERANK, {"results": [{"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": -3}]}),
    (AnswerShape.RERANK, {"results": []}),  # top_n=0, or no documents
    (AnswerShape.TEI, [{"index": 0, "score": 0.5, "text": "a"}]),
    (AnswerShape.SCORE, {"data": [{"index": 1, "object": "score", "score": 1e-9}]}),
    (AnswerShape.MODELS, {"object": "list", "data": []}),
])
def test_the_right_shapes_pass(shape: AnswerShape, answer: Any) -> None:
    check_answer(shape, answer, documents=2)


@pytest.mark.parametrize(("shape", "answer", "named"), [
    (AnswerShape.RERANK, [], "JSON object with `results`, got a list"),
    (AnswerShape.RERANK, {"results": {"index": 0}}, "`results` must be a list"),
    (AnswerShape.RERANK, {"results": [7]}, "`results`[0] must be an object"),
    (AnswerShape.RERANK, {"results": [{"index": -1, "relevance_score": 1}]}, "from 0 to 1, got -1"),
    (AnswerShape.RERANK, {"results": [{"index": 2, "relevance_score": 1}]}, "from 0 to 1, got 2"),
    (AnswerShape.RERANK, {"results": [{"index": 0.0, "relevance_score": 1}]}, "got 0.0"),
    (AnswerShape.RERANK, {"results": [{"index": 0, "relevance_score": float("nan")}]}, "finite number, got nan"),
    (AnswerShape.RERANK, {"results": [{"index": 0, "relevance_score": False}]}, "finite number, got False"),
    (AnswerShape.TEI, {"results": []}, "must be a JSON list"),
    (AnswerShape.SCORE, {"data": None}, "`data` must be a list of {index, score}, got null"),
    (AnswerShape.SCORE, {"data": [{"index": 0, "score": 1}] * 3}, "3 items for 2 inputs"),
    (AnswerShape.MODELS, {"models": []}, "a model list needs a `data` list"),
])
def test_a_wrong_shape_names_what_is_wrong(shape: AnswerShape, answer: Any, named: str) -> None:
    with pytest.raises(UpstreamMalformedError, match="wrong shape") as caught:
        check_answer(shape, answer, documents=2)
    assert named in caught.value.message


def test_accept_answer_reads_the_tokens_after_the_shape() -> None:
    body = json.dumps({"results": [{"index": 0, "relevance_score": 1}], "usage": {"prompt_tokens": 5}}).encode()
    assert accept_answer(AnswerShape.RERANK, {}, body, 1) == 5
    assert accept_answer(AnswerShape.RERANK, {"x-prompt-tokens": "9"}, body, 1) == 9  # the header wins
    with pytest.raises(UpstreamMalformedError, match="not JSON"):  # even when the header has a count
        accept_answer(AnswerShape.RERANK, {"x-prompt-tokens": "9"}, b"<html>", 1)


def test_a_rerankd_error_is_rebuilt_from_its_fields_only() -> None:
    body = json.dumps({"error": {"message": "m" * 5000, "type": "invalid_request", "code": 999, "field": "top_n",
                                 "trace": "postgresql://u:pw@db/x"}}).encode()
    rebuilt = json.loads(safe_error_body(422, body, request_id="r1", upstream="http://u"))
    error = rebuilt["error"]
    assert set(error) == {"message", "type", "code", "field"} and error["code"] == 422  # the status answered
    assert len(error["message"]) <= MAX_ERROR_MESSAGE_CHARS + 10 and error["message"].endswith("(cut)")
    assert (error["type"], error["field"]) == ("invalid_request", "top_n")


def test_a_tei_error_from_a_replica_keeps_its_message_and_type() -> None:
    body = json.dumps({"error": "`texts[1]` is longer than the model length", "error_type": "Validation"}).encode()
    error = json.loads(safe_error_body(422, body, request_id="r", upstream="u"))["error"]
    assert error == {"message": "`texts[1]` is longer than the model length", "type": "Validation", "code": 422}


def test_odd_type_and_field_values_are_dropped_not_echoed() -> None:
    body = json.dumps({"error": {"message": "no", "type": "<img src=x>", "field": "a b\nc"}}).encode()
    error = json.loads(safe_error_body(400, body, request_id="r", upstream="u"))["error"]
    assert error == {"message": "no", "type": "bad_request", "code": 400}


@pytest.mark.parametrize("body", [b"<h1>Internal Server Error</h1>", b"[1, 2]", b'{"detail": "x"}',
                                  b'{"error": "a string"}', b'{"error": {"message": 5}}', b"\xff\xfe"])
def test_anything_else_becomes_a_generic_message_and_a_log_line(body: bytes, caplog: pytest.LogCaptureFixture,
                                                                ) -> None:
    with caplog.at_level(logging.WARNING, logger="rerankd.gateway.answers"):
        rebuilt = json.loads(safe_error_body(500, body, request_id="req-9", upstream="http://u:1"))
    message = "the replica answered 500; see the gateway log (request id req-9)"
    assert rebuilt == {"error": {"message": message, "type": "upstream_error", "code": 500}, "detail": message}
    assert [getattr(r, "request_id", None) for r in caplog.records] == ["req-9"]


def test_key_labels_are_bounded() -> None:
    labels = KeyLabels(limit=2)
    key = Identity(key_id="k1", name="alpha", kind="key", is_admin=False)
    jwt = Identity(key_id="jwt:carol", name="jwt:carol", kind="jwt", is_admin=False)
    assert labels.of(key) == "alpha" and labels.of(jwt) == JWT_LABEL
    assert labels.of(Identity(key_id="k2", name="beta", kind="key", is_admin=False)) == "beta"
    assert labels.of(Identity(key_id="k3", name="gamma", kind="key", is_admin=False)) == "other"
    assert labels.of(key) == "alpha"  # names seen before keep theirs


def test_the_charger_counts_each_request_under_its_routes_task() -> None:
    """An embedding route's tokens and inputs are the key's ``task="embed"`` series, a scoring route's ``rerank``."""
    metrics = GatewayMetrics()
    charger = UsageCharger(RateLimiter(), UsageLedger(create_engine_for("sqlite://")), metrics)
    who = Identity(key_id="k1", name="team", kind="key", is_admin=False)
    for route, tokens, documents in (("/v1/embeddings", 9, 3), ("/v2/embed", 4, 1), ("/v2/rerank", 20, 2)):
        charger.record(Outcome(identity=who, route=route, model="m", documents=documents, status=200, tokens=tokens,
                               latency_ms=1.0, request_id="r", request_id_given=False))
    named = metrics.exposition(with_keys=True).decode()
    assert 'rerankd_gateway_key_tokens_total{key="team",task="embed"} 13.0' in named
    assert 'rerankd_gateway_key_documents_total{key="team",task="embed"} 4.0' in named
    assert 'rerankd_gateway_key_tokens_total{key="team",task="rerank"} 20.0' in named
    assert 'rerankd_gateway_key_requests_total{key="team",status="200",task="embed"} 2.0' in named


def test_the_open_exposition_sums_over_keys_and_the_named_one_replaces_it() -> None:
    metrics = GatewayMetrics()
    metrics.key_requests_total.labels(key="alpha", status="200", task="rerank").inc()
    metrics.key_requests_total.labels(key="beta", status="200", task="rerank").inc(2)
    metrics.key_requests_total.labels(key="beta", status="429", task="rerank").inc()
    metrics.key_requests_total.labels(key="beta", status="200", task="embed").inc(5)
    metrics.key_tokens_total.labels(key="beta", task="rerank").inc(40)
    metrics.key_tokens_total.labels(key="alpha", task="embed").inc(7)
    open_text = metrics.exposition(with_keys=False).decode()
    assert open_text == generate_latest(metrics.registry).decode()
    assert f'rerankd_gateway_key_requests_total{{key="{ALL_KEYS_LABEL}",status="200",task="rerank"}} 3.0' in open_text
    assert f'rerankd_gateway_key_requests_total{{key="{ALL_KEYS_LABEL}",status="429",task="rerank"}} 1.0' in open_text
    assert f'rerankd_gateway_key_tokens_total{{key="{ALL_KEYS_LABEL}",task="rerank"}} 40.0' in open_text
    # Summed over keys, never over tasks.
    assert f'rerankd_gateway_key_requests_total{{key="{ALL_KEYS_LABEL}",status="200",task="embed"}} 5.0' in open_text
    assert f'rerankd_gateway_key_tokens_total{{key="{ALL_KEYS_LABEL}",task="embed"}} 7.0' in open_text
    assert "alpha" not in open_text and "beta" not in open_text
    named = metrics.exposition(with_keys=True).decode()
    assert 'rerankd_gateway_key_requests_total{key="beta",status="200",task="rerank"} 2.0' in named
    assert f'key="{ALL_KEYS_LABEL}"' not in named
    assert named.count("# TYPE rerankd_gateway_key_requests_total counter") == 1
    assert "rerankd_gateway_requests_total" in named  # everything else is in both


def test_a_departed_replica_takes_its_series_with_it() -> None:
    metrics = GatewayMetrics()
    metrics.watch_upstream("http://10.0.0.7:8000")
    metrics.upstream_requests_total.labels(upstream="http://10.0.0.7:8000", outcome="success").inc()
    metrics.upstream_duration_seconds.labels(upstream="http://10.0.0.7:8000").observe(0.1)
    assert "10.0.0.7" in metrics.exposition(with_keys=False).decode()
    metrics.forget_upstream("http://10.0.0.7:8000")
    metrics.forget_upstream("http://10.0.0.8:8000")  # never seen: nothing to remove, no error
    assert "10.0.0.7" not in metrics.exposition(with_keys=False).decode()
