"""Gateway configuration: YAML file, environment and flags, in that order of strength; clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from rerankd.gateway import command
from rerankd.gateway.forward import RetryBudget
from rerankd.gateway.settings import GatewayConfigError, GatewaySettings, load_yaml_config


def settings_from(args: list[str], env: dict[str, str] | None = None) -> GatewaySettings:
    """Run `rerankd gateway` up to the point where settings exist, and return them."""
    captured: dict[str, GatewaySettings] = {}

    def fake_app(settings: GatewaySettings) -> None:
        captured["settings"] = settings
        raise SystemExit(0)

    import rerankd.gateway.app as app_module

    saved = app_module.create_gateway_app
    app_module.create_gateway_app = fake_app  # type: ignore[assignment]
    try:
        result = CliRunner().invoke(command.gateway, args, env=env or {})
    finally:
        app_module.create_gateway_app = saved
    assert "settings" in captured, result.output
    return captured["settings"]


def test_yaml_env_and_flags_merge_in_order(tmp_path: Path) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text("upstream:\n  - http://a:8000\n  - http://b:8000\nsplit-threshold: 10\nport: 9000\n"
                      "max_attempts: 5\n")
    s = settings_from(["--config", str(config)])
    assert s.upstreams == ["http://a:8000", "http://b:8000"]
    assert (s.split_threshold, s.port, s.max_attempts) == (10, 9000, 5)
    s = settings_from(["--config", str(config), "--port", "9100"], env={"RERANKD_SPLIT_THRESHOLD": "20"})
    assert (s.split_threshold, s.port, s.max_attempts) == (20, 9100, 5)
    s = settings_from(["--config", str(config), "--upstream", "http://c:1"])
    assert s.upstreams == ["http://c:1"]


def test_bad_configuration_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("splitthreshold: 3\n")
    with pytest.raises(GatewayConfigError, match="unknown settings"):
        load_yaml_config(config)
    config.write_text("split_threshold: -1\n")
    with pytest.raises(GatewayConfigError, match="split_threshold"):
        load_yaml_config(config)
    result = CliRunner().invoke(command.gateway, [])
    assert result.exit_code == 2 and "no upstreams" in result.output
    result = CliRunner().invoke(command.gateway, ["--upstream", "ftp://x"])
    assert result.exit_code == 2 and "ftp://x" in result.output


def test_retry_budget_allows_a_share_of_recent_requests() -> None:
    budget = RetryBudget(ratio=0.5, min_per_second=0.0, window=60)
    for _ in range(10):
        budget.note_request()
    assert sum(budget.try_spend() for _ in range(20)) == 5
    floor = RetryBudget(ratio=0.0, min_per_second=1.0, window=3)
    assert sum(floor.try_spend() for _ in range(10)) == 3


def test_a_short_metrics_token_is_refused_without_echoing_it() -> None:
    settings = GatewaySettings(upstreams=["http://replica:8000"], metrics_token="hunter2-short")
    with pytest.raises(GatewayConfigError, match="--metrics-token must be at least 16") as caught:
        settings.check_runnable()
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(settings)
    GatewaySettings(upstreams=["http://replica:8000"], metrics_token="x" * 16).check_runnable()
