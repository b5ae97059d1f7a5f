"""Reading PromQL out of the deploy files: which metric names and labels the rules and dashboards query.

Shared by the unit test that checks names against the code's registries and the integration test that
checks them against a real ``/metrics`` after traffic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULE_FILES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
# The endpoint picker's engine mapping: the metric specs (PromQL instant-vector selectors) it reads per replica.
EPP_CONFIG = DEPLOY / "k8s" / "overlays" / "inference-gateway" / "epp-config.yaml"
EPP_SPEC_FIELDS = ("queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec", "loraSpec", "cacheInfoSpec",
                   "cacheBlockSizeSpec", "cacheNumBlocksSpec")

_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
             "offset", "inf", "nan"}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_NUMBER = re.compile(r"(?<![\w:])(?:0x[0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?|\.\d+)")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^{}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$", re.S)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (Grafana ``$variables`` allowed).

    A tokenizer, not a parser: take out what is not a name (strings, label matchers, ranges, grouping
    label lists, variables, numbers), then every identifier not followed by ``(`` and not a keyword is
    a metric name.
    """
    names = set(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^{}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = _GROUPING.sub(" ", s)
    s = re.sub(r"\$\{[^}]*\}|\$\w+", " ", s)
    s = re.sub(r"\boffset\s+-?\w+", " ", s)
    s = _NUMBER.sub(" ", s)
    for m in _IDENT.finditer(s):
        followed_by_call = s[m.end():].lstrip().startswith("(")
        if not followed_by_call and m.group(0).lower() not in _KEYWORDS:
            names.add(m.group(0))
    return names


def selector_labels(expr: str) -> Iterator[tuple[str, str]]:
    """``(metric, label)`` for every label matcher written inside ``metric{...}``."""
    for selector in _SELECTOR.finditer(expr):
        body = _STRING.sub('""', selector.group(2))
        for label in _MATCHER.findall(body):
            yield selector.group(1), label


def rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def dashboard_exprs(path: Path) -> list[str]:
    board = json.loads(path.read_text())
    exprs = [d["expr"] for d in _walk(board.get("panels", [])) if isinstance(d.get("expr"), str)]
    for variable in board.get("templating", {}).get("list", []):
        query = variable.get("definition") or ""
        if m := _LABEL_VALUES.match(query):
            exprs.append(m.group(1))
    return exprs


def picker_exprs() -> list[tuple[str, str]]:
    """Every metric spec of the rerankd engine mapping in the endpoint picker's configuration."""
    config = yaml.safe_load(EPP_CONFIG.read_text())
    out = []
    for plugin in config["plugins"]:
        for engine in (plugin.get("parameters") or {}).get("engineConfigs", []):
            out += [(f"epp engine {engine['name']} {field}", engine[field]) for field in EPP_SPEC_FIELDS
                    if engine.get(field)]
            out += [(f"epp engine {engine['name']} {m['attributeKey']}", m["metricSpec"])
                    for m in engine.get("customMetrics", [])]
    return out


def all_exprs() -> list[tuple[str, str]]:
    """Rules, dashboards and the endpoint picker's mapping: everything that reads a metric by name."""
    out = [(f"rule {r.get('alert') or r.get('record')}", r["expr"]) for r in rules()]
    for path in DASHBOARDS:
        out += [(path.name, e) for e in dashboard_exprs(path)]
    return out + picker_exprs()
