"""Rendering Alertmanager notifications as DingTalk / WeCom robot markdown."""

from __future__ import annotations

from typing import Any

import pytest

from rerankd.observability.alert_format import (
    WECOM_MAX_BYTES,
    Notification,
    dingtalk_message,
    render_markdown,
    truncate_utf8,
    wecom_message,
)


def _alert(i: int, status: str = "firing", **annotations: str) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": "RerankdReplicaDown", "severity": "warning", "job": "rerankd-gateway",
                   "upstream": f"http://s{i}:8000"},
        "annotations": {"summary": f"Replica http://s{i}:8000 fails health checks",
                        "runbook": "Restart the replica.", **annotations},
        "startsAt": "2026-11-24T13:00:00.123Z",
        "endsAt": "2026-11-24T13:30:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
        "fingerprint": f"fp{i}",
    }


def _notification(alerts: list[dict[str, Any]], status: str = "firing", **extra: Any) -> Notification:
    """The shape Alertmanager 0.25 posts (webhook version 4), with a field we do not model."""
    return Notification.model_validate({
        "version": "4", "status": status, "receiver": "team-chat", "groupKey": "{}:{alertname=\"RerankdReplicaDown\"}",
        "truncatedAlerts": 0, "groupLabels": {"alertname": "RerankdReplicaDown"},
        "commonLabels": {"alertname": "RerankdReplicaDown", "severity": "warning", "job": "rerankd-gateway"},
        "commonAnnotations": {}, "externalURL": "http://alertmanager:9093", "alerts": alerts,
        "someFutureField": 1, **extra,
    })


def test_dingtalk_message_is_markdown_with_title_summary_labels_and_runbook() -> None:
    body = dingtalk_message(_notification([_alert(1), _alert(2)]))
    assert body["msgtype"] == "markdown"
    markdown = body["markdown"]
    assert isinstance(markdown, dict)
    assert markdown["title"] == "[FIRING:2] RerankdReplicaDown"
    text = markdown["text"]
    assert text.startswith("### [FIRING:2] RerankdReplicaDown")
    assert "job=rerankd-gateway" in text  # common labels once, in the header
    assert "Replica http://s1:8000 fails health checks" in text and "Replica http://s2:8000" in text
    assert "upstream=http://s1:8000" in text  # the label that tells the alerts apart
    assert text.count("Runbook: Restart the replica.") == 2
    assert "Since 2026-11-24 13:00:00 UTC" in text
    assert "0001" not in text  # "not ended" is not printed as year 1
    assert text.endswith("[Alertmanager](http://alertmanager:9093)")


def test_wecom_message_uses_content_and_wecom_colours() -> None:
    body = wecom_message(_notification([_alert(1)]))
    assert body["msgtype"] == "markdown"
    content = body["markdown"]["content"]  # type: ignore[index]
    assert '<font color="warning">FIRING</font>' in content
    assert "title" not in body["markdown"]  # type: ignore[operator]


def test_resolved_alerts_say_so_and_come_after_firing_ones() -> None:
    n = _notification([_alert(1, status="resolved"), _alert(2)])
    title, text = render_markdown(n, "wecom", WECOM_MAX_BYTES)
    assert title == "[FIRING:1] RerankdReplicaDown"
    assert text.index("s2:8000") < text.index("s1:8000")
    assert '<font color="info">RESOLVED</font>' in text
    assert "resolved 2026-11-24 13:30:00 UTC" in text
    all_resolved = _notification([_alert(1, status="resolved")], status="resolved")
    assert render_markdown(all_resolved, "dingtalk", 10_000)[0] == "[RESOLVED] RerankdReplicaDown"


def test_wecom_message_stays_within_4096_bytes_and_counts_what_it_left_out() -> None:
    # Chinese text: 3 bytes a character, so a character count would overshoot the byte limit.
    alerts = [_alert(i, description="副本健康检查失败，流量已切换到其他副本。" * 5) for i in range(60)]
    content = wecom_message(_notification(alerts, truncatedAlerts=5))["markdown"]["content"]  # type: ignore[index]
    size = len(content.encode("utf-8"))
    assert 3000 < size <= WECOM_MAX_BYTES  # filled, not over
    shown = content.count("fails health checks")
    assert 0 < shown < 60
    assert f"… and {60 - shown + 5} more alert(s)" in content  # the 5 Alertmanager truncated count too
    assert content.endswith("[Alertmanager](http://alertmanager:9093)")


def test_one_alert_larger_than_the_limit_is_cut_not_dropped() -> None:
    huge = _alert(1, description="长" * 5000)
    text = render_markdown(_notification([huge]), "wecom", WECOM_MAX_BYTES)[1]
    assert len(text.encode("utf-8")) <= WECOM_MAX_BYTES
    assert text.startswith("### [FIRING:1]") and text.endswith("…")


@pytest.mark.parametrize("limit", range(0, 12))
def test_truncate_utf8_never_splits_a_character(limit: int) -> None:
    text = "ab重排序cd"  # 1+1+3+3+3+1+1 = 13 bytes
    out = truncate_utf8(text, limit)
    assert len(out.encode("utf-8")) <= limit
    assert text.startswith(out.removesuffix("…"))  # a clean prefix, valid UTF-8 by construction


def test_truncate_utf8_leaves_short_text_alone() -> None:
    assert truncate_utf8("重排序", 9) == "重排序"
    assert truncate_utf8("重排序", 8) == "重…"
