"""The Prometheus and Alertmanager files, checked by the real tools: promtool and amtool.

CI installs them (Debian packages ``prometheus`` and ``prometheus-alertmanager``, see ``.ci/run``), so
there a missing tool is a failure; on a workstation without them these tests are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROM = DEPLOY / "prometheus"
AM = DEPLOY / "alertmanager"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROM / "tests").glob("*.yml"))


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not installed; CI must install it (apt-get install prometheus prometheus-alertmanager)")
    pytest.skip(f"{name} is not installed (apt-get install prometheus prometheus-alertmanager)")


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]


# ------------------------------------------------------------------------------------- promtool


@pytest.mark.parametrize("config", ["prometheus.yml", "prometheus-kubernetes.yml"])
def test_prometheus_config_is_valid(config: str) -> None:
    result = _run(_tool("promtool"), "check", "config", config, cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(RULE_FILES)} rule files found" in result.stdout + result.stderr


def test_rules_are_valid() -> None:
    result = _run(_tool("promtool"), "check", "rules", *[str(p) for p in RULE_FILES], cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass() -> None:
    assert len(RULE_TESTS) >= 4
    result = _run(_tool("promtool"), "test", "rules", *[str(p) for p in RULE_TESTS], cwd=PROM)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (result.stdout + result.stderr).count("SUCCESS") == len(RULE_TESTS)


def test_promtool_fails_a_wrong_expectation(tmp_path: Path) -> None:
    """The rule tests can fail: the same test with one expected label changed must not pass."""
    source = (PROM / "tests" / "availability_test.yml").read_text()
    assert "exp_labels: {severity: warning, job: rerankd-server, instance: \"s1:8000\"}" in source
    broken = source.replace("../rules/", f"{PROM / 'rules'}/").replace(
        "exp_labels: {severity: warning, job: rerankd-server, instance: \"s1:8000\"}",
        "exp_labels: {severity: critical, job: rerankd-server, instance: \"s1:8000\"}", 1)
    (tmp_path / "broken_test.yml").write_text(broken)
    result = _run(_tool("promtool"), "test", "rules", "broken_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "FAILED" in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {rule["alert"] for rule in _alert_rules()}
    assert len(alerts) >= 10
    assert alerts - firing == set(), "alerts without a firing test"
    assert alerts - quiet == set(), "alerts without a non-firing test"
    assert (firing | quiet) - alerts == set(), "tests for alerts that do not exist"


def test_every_alert_has_severity_summary_and_runbook() -> None:
    for rule in _alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        annotations = rule["annotations"]
        assert annotations.get("summary") and annotations.get("description"), rule["alert"]
        assert annotations.get("runbook") or annotations.get("runbook_url"), rule["alert"]
        assert rule.get("for"), f"{rule['alert']}: an alert without `for` pages on one bad scrape"


def test_the_issue_s_alerts_all_exist() -> None:
    names = {rule["alert"] for rule in _alert_rules()}
    assert {"RerankdHighLatencyP99", "RerankdHighErrorRatio", "RerankdGpuUtilizationHigh", "RerankdQueueSaturated",
            "RerankdReplicaDown", "RerankdAllReplicasDown", "RerankdBreakerOpen", "RerankdLedgerLag"} <= names


# ------------------------------------------------------------------------------------- amtool


def test_alertmanager_config_is_valid() -> None:
    result = _run(_tool("amtool"), "check-config", "alertmanager.yml", cwd=AM)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 templates" in result.stdout  # the template glob matched our file


@pytest.mark.parametrize(("labels", "receiver"), [
    (["severity=critical", "alertname=RerankdAllReplicasDown"], "oncall"),
    (["severity=warning", "alertname=RerankdReplicaDown"], "team-chat"),
    (["alertname=SomethingWithoutSeverity"], "team-chat"),
])
def test_alertmanager_routes_by_severity(labels: list[str], receiver: str) -> None:
    result = _run(_tool("amtool"), "config", "routes", "test", "--config.file=alertmanager.yml", *labels, cwd=AM)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_wecom_template_renders() -> None:
    result = _run(_tool("amtool"), "template", "render", "--template.glob=templates/*.tmpl",
                  '--template.text={{ template "rerankd.wecom.message" . }}', cwd=AM)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("**[") and "<font color=" in result.stdout


def test_alertmanager_uses_wecom_natively_and_the_relay_routes_that_exist() -> None:
    """The webhook URLs must be routes the relay serves, or every notification would get a 404."""
    from rerankd.observability.alert_delivery import Robot
    from rerankd.observability.alert_relay import RelaySettings, create_relay_app

    config = yaml.safe_load((AM / "alertmanager.yml").read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    assert receivers["oncall"]["wechat_configs"][0]["message_type"] == "markdown"
    app = create_relay_app(RelaySettings(robots=(Robot("dingtalk", "http://d"), Robot("wecom", "http://w"))))
    served = {getattr(route, "path", "") for route in app.routes}
    urls = [hook["url"] for r in receivers.values() for hook in r.get("webhook_configs", [])]
    assert len(urls) >= 2
    for url in urls:
        path = "/" + url.split("://", 1)[1].split("/", 1)[1]
        kind = path.removeprefix("/alerts/")
        assert path == "/alerts" or ("/alerts/{kind}" in served and kind in {"dingtalk", "wecom"}), url
