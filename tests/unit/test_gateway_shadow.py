"""The shadow scorer's bounds, off the live path: past ``shadow-concurrency`` a sample is dropped (not queued), a
failing shadow is only counted, and what is compared lands in the histograms.

The shadow's ``send`` here is a coroutine the test releases (the pipeline's forward step in production), so the
test decides when a shadow request is "in flight" without timing anything."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import pytest

from rerankd.gateway.answers import AnswerShape
from rerankd.gateway.forward import UpstreamReply
from rerankd.gateway.rollout import Rollout, RolloutSettings
from rerankd.gateway.shadow import ShadowScorer
from rerankd.observability.gateway_metrics import GatewayMetrics


@dataclass(eq=False)
class Pool:
    name: str
    task: str = "rerank"


def _answer(scores: list[float]) -> bytes:
    return json.dumps({"results": [{"index": i, "relevance_score": s} for i, s in enumerate(scores)]}).encode()


def _value(metrics: GatewayMetrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


LABELS = {"model": "stable", "pool": "stable", "shadow": "rc"}


def test_past_the_bound_a_sample_is_dropped_and_the_rest_compared() -> None:
    async def run() -> GatewayMetrics:
        metrics = GatewayMetrics()
        stable, rc = Pool("stable"), Pool("rc")
        rollout: Rollout[Any] = Rollout.build(RolloutSettings(model="stable", shadow="rc", shadow_concurrency=1),
                                              {"stable": stable, "rc": rc})
        scorer = ShadowScorer(metrics)
        release = asyncio.Event()
        sent: list[str] = []

        async def send(pool: Any) -> UpstreamReply:
            sent.append(pool.name)
            await release.wait()
            return UpstreamReply(status=200, body=_answer([0.1, 0.5, 0.9]), headers={}, upstream="u", attempts=1)

        live = _answer([0.2, 0.4, 0.9])
        scorer.offer(rollout, stable, AnswerShape.RERANK, 3, live, send)  # type: ignore[arg-type]
        await asyncio.sleep(0)  # let the first shadow request start: it now waits on `release`
        scorer.offer(rollout, stable, AnswerShape.RERANK, 3, live, send)  # type: ignore[arg-type]
        assert scorer.in_flight == 1 and sent == ["rc"]
        assert _value(metrics, "rerankd_gateway_shadow_requests_total", **LABELS, outcome="dropped") == 1
        release.set()
        while scorer.in_flight:
            await asyncio.sleep(0)
        scorer.offer(rollout, stable, AnswerShape.RERANK, 3, live, send)  # the bound is free again
        while scorer.in_flight:
            await asyncio.sleep(0)
        await scorer.close()
        return metrics

    metrics = asyncio.run(run())
    assert _value(metrics, "rerankd_gateway_shadow_requests_total", **LABELS, outcome="compared") == 2
    assert _value(metrics, "rerankd_gateway_shadow_score_drift_count", **LABELS) == 6
    assert _value(metrics, "rerankd_gateway_shadow_score_drift_sum", **LABELS) == pytest.approx(2 * (0.1 + 0.1 + 0.0))
    assert _value(metrics, "rerankd_gateway_shadow_spearman_count", **LABELS) == 2
    assert _value(metrics, "rerankd_gateway_shadow_spearman_bucket", **LABELS, le="0.99") == 0  # rho = 1
    assert _value(metrics, "rerankd_gateway_shadow_top_k_overlap_sum", **LABELS) == 2.0


def test_a_failing_or_malformed_shadow_is_only_counted() -> None:
    async def run() -> GatewayMetrics:
        metrics = GatewayMetrics()
        stable, rc = Pool("stable"), Pool("rc")
        rollout: Rollout[Any] = Rollout.build(RolloutSettings(model="stable", shadow="rc"),
                                              {"stable": stable, "rc": rc})
        scorer = ShadowScorer(metrics)
        answers = iter([
            UpstreamReply(status=503, body=b"{}", headers={}, upstream="u", attempts=1),
            UpstreamReply(status=200, body=b"<html>", headers={}, upstream="u", attempts=1),
            UpstreamReply(status=200, body=_answer([0.5] * 8), headers={}, upstream="u", attempts=1),  # 8 for 3 inputs
        ])

        async def send(pool: Any) -> UpstreamReply:
            return next(answers)

        async def broken(pool: Any) -> UpstreamReply:
            raise ConnectionError("gone")

        for sender in (send, send, send, broken):
            scorer.offer(rollout, stable, AnswerShape.RERANK, 3, _answer([0.2, 0.4, 0.9]), sender)  # type: ignore[arg-type]
            while scorer.in_flight:
                await asyncio.sleep(0)
        return metrics

    metrics = asyncio.run(run())
    assert _value(metrics, "rerankd_gateway_shadow_requests_total", **LABELS, outcome="failed") == 4
    assert _value(metrics, "rerankd_gateway_shadow_requests_total", **LABELS, outcome="compared") == 0
    assert _value(metrics, "rerankd_gateway_shadow_score_drift_count", **LABELS) == 0
