"""Alertmanager webhook payloads and their rendering as DingTalk / WeCom robot markdown.

Pure functions, no I/O: the relay (``alert_relay``) parses, renders, then delivers. Kept apart so the
formatting rules (what a message holds, how it fits the robots' size limits) are tested on their own.

Alertmanager's webhook body is documented at
https://prometheus.io/docs/alerting/latest/configuration/#webhook_config (``version: "4"``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "DINGTALK_MAX_BYTES",
    "WECOM_MAX_BYTES",
    "Alert",
    "Notification",
    "dingtalk_message",
    "render_markdown",
    "truncate_utf8",
    "wecom_message",
]

# WeCom group robots refuse markdown content over 4096 bytes (UTF-8). DingTalk documents no hard
# figure for markdown; 20000 bytes is what its robots accept in practice, and a page is plenty.
WECOM_MAX_BYTES = 4096
DINGTALK_MAX_BYTES = 20000
_ELLIPSIS = "…"


class Alert(BaseModel):
    """One alert of a notification."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    status: Literal["firing", "resolved"] = "firing"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime | None = Field(default=None, alias="startsAt")
    ends_at: datetime | None = Field(default=None, alias="endsAt")
    generator_url: str = Field(default="", alias="generatorURL")
    fingerprint: str = ""


class Notification(BaseModel):
    """The body Alertmanager POSTs to a webhook receiver: one group of alerts."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    version: str = "4"
    status: Literal["firing", "resolved"] = "firing"
    receiver: str = ""
    group_key: str = Field(default="", alias="groupKey")
    truncated_alerts: int = Field(default=0, alias="truncatedAlerts")
    group_labels: dict[str, str] = Field(default_factory=dict, alias="groupLabels")
    common_labels: dict[str, str] = Field(default_factory=dict, alias="commonLabels")
    common_annotations: dict[str, str] = Field(default_factory=dict, alias="commonAnnotations")
    external_url: str = Field(default="", alias="externalURL")
    alerts: list[Alert] = Field(default_factory=list)


def truncate_utf8(text: str, max_bytes: int) -> str:
    """Cut ``text`` to at most ``max_bytes`` of UTF-8 without splitting a character, marking the cut."""
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    room = max_bytes - len(_ELLIPSIS.encode("utf-8"))
    if room <= 0:
        return ""
    # errors="ignore" drops the partial multi-byte character the byte cut may leave at the end.
    return data[:room].decode("utf-8", errors="ignore") + _ELLIPSIS


def _title(n: Notification) -> str:
    firing = sum(1 for a in n.alerts if a.status == "firing")
    name = n.common_labels.get("alertname") or n.group_labels.get("alertname") or "alerts"
    status = f"FIRING:{firing}" if n.status == "firing" else "RESOLVED"
    return f"[{status}] {name}"


def _when(moment: datetime | None) -> str:
    # Alertmanager sends year 1 for "not ended"; show nothing rather than 0001-01-01.
    if moment is None or moment.year < 2000:
        return ""
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _alert_block(alert: Alert, common: dict[str, str], flavor: Literal["dingtalk", "wecom"]) -> str:
    """One alert: status, severity, summary, the labels that differ from the group, runbook, times."""
    firing = alert.status == "firing"
    severity = alert.labels.get("severity", "")
    if flavor == "wecom":  # WeCom markdown has three named colours
        colour = "warning" if firing else "info"
        badge = f'<font color="{colour}">{alert.status.upper()}</font>'
    else:  # DingTalk renders HTML font colours
        colour = "#d93026" if firing else "#188038"
        badge = f'<font color="{colour}">{alert.status.upper()}</font>'
    summary = alert.annotations.get("summary") or alert.labels.get("alertname", "alert")
    lines = [" ".join(p for p in (f"**{badge}**", severity, "·", summary) if p)]
    if description := alert.annotations.get("description"):
        lines.append(f"> {description}")
    own = {k: v for k, v in sorted(alert.labels.items()) if common.get(k) != v and k != "alertname"}
    if own:
        lines.append("> " + ", ".join(f"{k}={v}" for k, v in own.items()))
    if runbook := alert.annotations.get("runbook"):
        lines.append(f"> Runbook: {runbook}")
    if runbook_url := alert.annotations.get("runbook_url"):
        lines.append(f"> [Runbook]({runbook_url})")
    started, ended = _when(alert.starts_at), _when(alert.ends_at)
    if started:
        lines.append(f"> Since {started}" + (f", resolved {ended}" if not firing and ended else ""))
    # DingTalk's markdown joins single newlines into one paragraph; WeCom keeps them.
    return ("\n\n" if flavor == "dingtalk" else "\n").join(lines)


def render_markdown(
    n: Notification, flavor: Literal["dingtalk", "wecom"], max_bytes: int
) -> tuple[str, str]:
    """``(title, text)`` for one notification, ``text`` within ``max_bytes`` of UTF-8.

    Alerts that do not fit are dropped whole (never cut mid-alert), with a last line saying how many
    were left out, so the reader knows to open Alertmanager. Firing alerts come before resolved ones.
    """
    title = _title(n)
    header = f"### {title}"
    if common := {k: v for k, v in sorted(n.common_labels.items()) if k not in ("alertname", "severity")}:
        header += "\n" + ", ".join(f"{k}={v}" for k, v in common.items())
    footer = f"\n\n[Alertmanager]({n.external_url})" if n.external_url else ""
    alerts = sorted(n.alerts, key=lambda a: a.status != "firing")
    blocks = [_alert_block(a, n.common_labels, flavor) for a in alerts]
    hidden_upstream = n.truncated_alerts  # alerts Alertmanager itself left out (max_alerts)

    def assemble(count: int) -> str:
        left_out = len(blocks) - count + hidden_upstream
        more = f"\n\n… and {left_out} more alert(s)" if left_out else ""
        return header + "".join("\n\n" + b for b in blocks[:count]) + more + footer

    count = len(blocks)
    text = assemble(count)
    while count > 1 and len(text.encode("utf-8")) > max_bytes:
        count -= 1
        text = assemble(count)
    return title, truncate_utf8(text, max_bytes)  # one huge alert: cut it rather than send nothing


def dingtalk_message(n: Notification, max_bytes: int = DINGTALK_MAX_BYTES) -> dict[str, object]:
    """The JSON body of a DingTalk robot markdown message."""
    title, text = render_markdown(n, "dingtalk", max_bytes)
    return {"msgtype": "markdown", "markdown": {"title": title, "text": text}}


def wecom_message(n: Notification, max_bytes: int = WECOM_MAX_BYTES) -> dict[str, object]:
    """The JSON body of a WeCom group robot markdown message (content within 4096 bytes)."""
    _, text = render_markdown(n, "wecom", max_bytes)
    return {"msgtype": "markdown", "markdown": {"content": text}}
