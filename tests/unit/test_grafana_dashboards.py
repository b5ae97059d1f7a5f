"""The provisioned Grafana dashboards load as Grafana expects: unique ids, laid out, wired to the data source."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_both_dashboards_exist_with_unique_uids() -> None:
    uids = {_load(p)["uid"] for p in DASHBOARDS}
    assert uids == {"rerankd-service", "rerankd-gateway"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_have_unique_ids_no_overlap_and_use_the_datasource_variable(path: Path) -> None:
    board = _load(path)
    panels = board["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}"
            assert p["targets"] and all(t["expr"] for t in p["targets"])
            ref_ids = [t["refId"] for t in p["targets"]]
            assert len(ref_ids) == len(set(ref_ids))
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= variables


def test_the_service_dashboard_covers_the_issue_s_panels() -> None:
    titles = " | ".join(p["title"] for p in _load(GRAFANA / "dashboards" / "rerankd-service.json")["panels"]).lower()
    for word in ("qps", "p99", "5xx ratio", "queue", "batch", "gpu utilisation", "gpu memory"):
        assert word in titles


def test_the_gateway_dashboard_covers_the_issue_s_panels() -> None:
    titles = " | ".join(p["title"] for p in _load(GRAFANA / "dashboards" / "rerankd-gateway.json")["panels"]).lower()
    for word in ("by key", "429", "replica health", "circuit breakers", "retries", "ledger lag"):
        assert word in titles


def test_provisioning_points_at_the_prometheus_datasource_and_dashboard_folder() -> None:
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    [ds] = datasource["datasources"]
    assert ds["type"] == "prometheus" and ds["uid"] == "prometheus"
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "rerankd.yml").read_text())
    assert provider["providers"][0]["type"] == "file"
    for path in DASHBOARDS:
        ds_var = next(v for v in _load(path)["templating"]["list"] if v["name"] == "datasource")
        assert ds_var["query"] == "prometheus"


@pytest.mark.parametrize(("path", "prefix"), [(p, "rerankd_gateway_" if "gateway" in p.name else "rerankd_")
                                              for p in DASHBOARDS], ids=lambda v: getattr(v, "name", v))
def test_each_dashboard_splits_requests_latency_and_tokens_by_task(path: Path, prefix: str) -> None:
    """Reranking and embedding share a gateway and a dashboard: requests, latency and tokens per task, each panel
    grouping by the ``task`` label (a panel summed over tasks would mix two models' loads)."""
    panels = _load(path)["panels"]
    start = next(i for i, p in enumerate(panels) if p["type"] == "row" and "by task" in p["title"].lower())
    row = panels[start + 1:]
    row = row[:next((i for i, p in enumerate(row) if p["type"] == "row"), len(row))]
    exprs = [t["expr"] for p in row for t in p["targets"]]
    tokens = "key_tokens_total" if "gateway" in prefix else "request_tokens_sum"
    for metric in (f"{prefix}requests_total", f"{prefix}request_duration_seconds_bucket", f"{prefix}{tokens}"):
        using = [e for e in exprs if metric in e]
        assert using and all(re.search(r"\bby \([^)]*\btask\b", e) for e in using), (metric, using)
