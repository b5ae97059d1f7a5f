"""A model rollout through a real gateway: two real ``rerankd serve`` pools with different random weights (seeds 0
and 1), a shadow rollout and a canary rollout.

The test recomputes what the gateway should export from both pools' own answers (each replica asked directly
with the same bodies), with its own Spearman and top-k code, and compares that with the gateway's ``/metrics``.
It orders events by the metrics (``wait_until`` on the shadow counter), never by sleeping.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rerankd.devtools.random_model import build_random_model
from rerankd.observability.gateway_metrics import SPEARMAN_BUCKETS
from support import Proc, free_port, spawn_gateway, spawn_replica, wait_until

pytestmark = pytest.mark.timeout(420)  # the first test starts a replica, on a loaded CI machine

ADMIN = "rollout-admin-secret"
TOP_K = 3
BODIES: list[dict[str, Any]] = [
    {"query": "capital of France", "documents": ["Paris is the capital", "Berlin", "Lyon is in France", "a cat",
                                                 "French wine", "the Eiffel tower", "Madrid", "Marseille port"]},
    {"query": "how do plants make food", "documents": ["photosynthesis uses light", "roots take water",
                                                       "cars burn fuel", "chlorophyll is green", "a recipe"]},
    {"query": "python list sort", "documents": ["sorted(xs)", "xs.sort()", "java arrays", "heapq", "bubble sort",
                                                "the snake", "key=len"]},
    {"query": "weather tomorrow", "documents": ["rain expected", "sunny spells", "stock prices", "wind from the west"],
     "top_n": 3},
]


@pytest.fixture(scope="module")
def pools(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The stable pool (the suite's tiny-model server, seed 0) and the new revision (a ``rerankd serve`` process
    of the same shape, seed 1). The new one loads while the shared server starts."""
    tmp = tmp_path_factory.mktemp("rollout")
    new_model = build_random_model(tmp / "tiny-seed-1", "tiny", seed=1)
    rc = spawn_replica(new_model, tmp)
    try:
        stable: str = request.getfixturevalue("server_url")
        rc.wait_ready(300)
        yield {"stable": stable, "rc": rc.url}
    finally:
        rc.stop(signal.SIGKILL)


def _gateway(tmp: Path, config: str) -> Proc:
    path = tmp / "gateway.yaml"
    path.write_text(config)
    proc = spawn_gateway(tmp, [], "--config", str(path), "--database-url", f"sqlite:///{tmp / 'gw.db'}",
                         "--admin-key", ADMIN, "--health-interval", "0.2").wait_ready(60)

    def every_pool_healthy() -> bool:
        info = httpx.get(f"{proc.url}/info", timeout=5).json()
        return all(m["healthy_replicas"] == m["replicas"] for m in info["models"] if m["id"] != "dead")

    wait_until(every_pool_healthy, 60, "the gateway to see every live pool's replica healthy")
    return proc


def _key(gateway: str) -> dict[str, str]:
    created = httpx.post(f"{gateway}/admin/keys", json={"name": "rollout"},
                         headers={"Authorization": f"Bearer {ADMIN}"})
    assert created.status_code == 201, created.text
    return {"Authorization": f"Bearer {created.json()['key']}"}


def _scores(answer: dict[str, Any]) -> dict[int, float]:
    return {r["index"]: r["relevance_score"] for r in answer["results"]}


def _direct(replica: str, body: dict[str, Any]) -> dict[int, float]:
    reply = httpx.post(f"{replica}/v1/rerank", json=body, timeout=60)
    assert reply.status_code == 200, reply.text
    return _scores(reply.json())


def _samples(gateway: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{gateway}/metrics", timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _rho(xs: list[float], ys: list[float]) -> float:
    """Spearman's rho without ties (random weights give none): 1 - 6 Σd² / (n (n² - 1))."""
    def ranks(values: list[float]) -> list[int]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0] * len(values)
        for rank, i in enumerate(order):
            out[i] = rank
        return out

    assert len(set(xs)) == len(xs) and len(set(ys)) == len(ys), "tied scores: use a tie-aware rho"
    n = len(xs)
    d2 = sum((a - b) ** 2 for a, b in zip(ranks(xs), ranks(ys), strict=True))
    return 1 - 6 * d2 / (n * (n * n - 1))


def _top(scores: dict[int, float], docs: list[int], k: int) -> set[int]:
    return set(sorted(docs, key=lambda i: (-scores[i], i))[:k])


def test_shadow_rollout_answers_from_stable_and_exports_the_agreement(pools: dict[str, str],
                                                                     tmp_path: Path) -> None:
    stable, rc = pools["stable"], pools["rc"]
    gateway = _gateway(tmp_path, f"""
pools:
  - name: stable
    upstreams: [{stable}]
  - name: rc
    upstreams: [{rc}]
default-model: stable
rollouts:
  - model: stable
    shadow: rc
    shadow-fraction: 1.0
    shadow-top-k: {TOP_K}
""").url
    key = _key(gateway)
    drifts: list[float] = []
    rhos: list[float] = []
    overlaps: list[float] = []
    for body in BODIES:
        answer = httpx.post(f"{gateway}/v1/rerank", json={**body, "model": "stable"}, headers=key, timeout=60)
        assert answer.status_code == 200, answer.text
        live = _scores(answer.json())
        want_live, want_shadow = _direct(stable, body), _direct(rc, body)
        # The client got the stable pool's answer, order and scores, and not the new model's.
        assert list(live) == list(want_live)
        assert live == pytest.approx(want_live, abs=1e-6)
        assert live != pytest.approx(want_shadow, abs=1e-3)
        docs = sorted(want_live.keys() & want_shadow.keys())
        drifts += [abs(want_live[i] - want_shadow[i]) for i in docs]
        if len(docs) >= 2:  # with top_n the answers may share fewer documents; below two rho is undefined
            rhos.append(_rho([want_live[i] for i in docs], [want_shadow[i] for i in docs]))
        k = min(TOP_K, len(docs))
        overlaps.append(len(_top(want_live, docs, k) & _top(want_shadow, docs, k)) / k)

    labels = {"model": "stable", "pool": "stable", "shadow": "rc"}
    wait_until(lambda: _value(_samples(gateway), "rerankd_gateway_shadow_requests_total", **labels,
                              outcome="compared") == len(BODIES), 60, "every shadow request to be compared")
    m = _samples(gateway)
    assert _value(m, "rerankd_gateway_shadow_requests_total", **labels, outcome="failed") == 0
    assert _value(m, "rerankd_gateway_shadow_requests_total", **labels, outcome="dropped") == 0
    assert _value(m, "rerankd_gateway_shadow_score_drift_count", **labels) == len(drifts)
    assert _value(m, "rerankd_gateway_shadow_score_drift_sum", **labels) == pytest.approx(sum(drifts), abs=1e-5)
    assert sum(drifts) > 1e-3  # the two models do differ: the comparison is not vacuous
    assert _value(m, "rerankd_gateway_shadow_spearman_count", **labels) == len(rhos) >= len(BODIES) - 1
    # rho has buckets and no _sum (it can be negative): every bucket holds the recomputed rhos at or below its
    # bound. A rho on a bound (rational values such as 0.8 occur) may fall either side of it in floating point.
    for bound in SPEARMAN_BUCKETS:
        below = sum(r <= bound - 1e-9 for r in rhos)
        on_bound = sum(abs(r - bound) < 1e-9 for r in rhos)
        got = _value(m, "rerankd_gateway_shadow_spearman_bucket", **labels, le=str(float(bound)))
        assert below <= got <= below + on_bound, (bound, got, rhos)
    assert len({r for r in rhos if all(abs(r - b) >= 1e-9 for b in SPEARMAN_BUCKETS)}) >= 2  # a real check
    assert _value(m, "rerankd_gateway_shadow_top_k_overlap_count", **labels) == len(BODIES)
    assert _value(m, "rerankd_gateway_shadow_top_k_overlap_sum", **labels) == pytest.approx(sum(overlaps), abs=1e-9)
    assert _value(m, "rerankd_gateway_pool_requests_total", model="stable", pool="stable") == len(BODIES)
    assert _value(m, "rerankd_gateway_pool_requests_total", model="rc", pool="rc") == 0
    # The per-document drift histogram's buckets hold the recomputed drifts (le=0.25 and le=+Inf as examples).
    assert _value(m, "rerankd_gateway_shadow_score_drift_bucket", **labels, le="+Inf") == len(drifts)
    assert _value(m, "rerankd_gateway_shadow_score_drift_bucket", **labels, le="0.25") == \
        sum(d <= 0.25 for d in drifts)


def test_canary_rollout_splits_by_weight_and_a_failing_shadow_is_only_counted(pools: dict[str, str],
                                                                             tmp_path: Path) -> None:
    """95/5 over 20 requests sends exactly one to the canary (smooth weighted round robin); the shadow pool here
    has no replica that answers, and every live answer is still the right one."""
    stable, rc = pools["stable"], pools["rc"]
    gateway = _gateway(tmp_path, f"""
pools:
  - stable={stable}
  - rc={rc}
  - dead=http://127.0.0.1:{free_port()}
rollouts:
  - model: stable
    weights: {{stable: 95, rc: 5}}
    shadow: dead
    shadow-concurrency: 20
""").url
    key = _key(gateway)
    body = BODIES[0]
    from_stable, from_rc = _direct(stable, body), _direct(rc, body)
    served = []
    for _ in range(20):
        answer = httpx.post(f"{gateway}/v1/rerank", json={**body, "model": "stable"}, headers=key, timeout=60)
        assert answer.status_code == 200, answer.text
        scores = _scores(answer.json())
        if scores == pytest.approx(from_stable, abs=1e-6):
            served.append("stable")
        else:
            assert scores == pytest.approx(from_rc, abs=1e-6), json.dumps(answer.json())
            served.append("rc")
    assert served.count("rc") == 1
    m = _samples(gateway)
    assert _value(m, "rerankd_gateway_pool_requests_total", model="stable", pool="stable") == 19
    assert _value(m, "rerankd_gateway_pool_requests_total", model="stable", pool="rc") == 1

    def failed(pool: str) -> float:
        return _value(_samples(gateway), "rerankd_gateway_shadow_requests_total", model="stable", pool=pool,
                      shadow="dead", outcome="failed")

    wait_until(lambda: failed("stable") == 19 and failed("rc") == 1, 60, "every shadow request to fail")
    m = _samples(gateway)
    assert _value(m, "rerankd_gateway_shadow_requests_total", model="stable", pool="stable", shadow="dead",
                  outcome="compared") == 0
    assert _value(m, "rerankd_gateway_shadow_score_drift_count", model="stable", pool="stable", shadow="dead") == 0
