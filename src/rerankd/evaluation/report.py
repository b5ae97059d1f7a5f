"""The evaluation's results as one JSON document and as plain-text tables for the terminal.

Why the JSON is the source of truth: the tables are built from it, so what a user reads and what a
script compares later cannot disagree.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rerankd.evaluation.metrics import metric_names, relative_lift
from rerankd.evaluation.runner import STAGE_LABELS, FirstStage, RerankRun

__all__ = ["build_report", "format_report", "write_json"]

DEFAULT_LABEL = "(server default instruction)"


def build_report(
    *,
    settings: dict[str, Any],
    queries: dict[str, str],
    first_stage: FirstStage,
    runs: Sequence[RerankRun],
    ks: Sequence[int],
    per_query: bool,
    stages: Sequence[FirstStage] = (),
) -> dict[str, Any]:
    """The report: ``settings`` as given, each first stage's metrics under its name (``bm25``, ``dense``,
    ``hybrid``), and per run the reranked metrics and their lifts over ``first_stage``, the stage reranked.

    ``stages`` are every first stage computed (``first_stage`` among them; default: only it)."""
    names = metric_names(ks)
    stages = list(stages) or [first_stage]
    report: dict[str, Any] = dict(settings)
    report["first_stage"] = first_stage.name
    for stage in stages:
        report[stage.name] = {n: stage.metrics[n] for n in names}
    report["runs"] = [
        {
            "instruction": run.instruction,
            "reranked": {n: run.metrics[n] for n in names},
            "lift": {n: relative_lift(first_stage.metrics[n], run.metrics[n]) for n in names},
            "resumed_queries": run.resumed,
        }
        for run in runs
    ]
    if per_query:
        rows = []
        for q, text in queries.items():
            row: dict[str, Any] = {"query_id": q, "query": text}
            for stage in stages:
                row[stage.name] = stage.per_query[q]
            row["reranked"] = [run.per_query[q] for run in runs]
            for stage in stages:
                row[f"{stage.name}_top"] = stage.candidates[q][:max(ks)]
            row["reranked_top"] = [run.rankings[q][:max(ks)] for run in runs]
            rows.append(row)
        report["per_query"] = rows
    return report


def write_json(report: dict[str, Any], path: Path | str) -> None:
    """Write atomically: a reader never sees half a file, and an old report survives a failed write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


def _num(value: float) -> str:
    return f"{value:.4f}"


def _lift(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.1f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    def line(cells: Sequence[str]) -> str:  # first column left-aligned (labels), numbers right-aligned
        padded = [str(c).ljust(w) if i == 0 else str(c).rjust(w)
                  for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(padded).rstrip()

    lines = [line(r) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _label(instruction: str | None, width: int = 60) -> str:
    if instruction is None:
        return DEFAULT_LABEL
    return instruction if len(instruction) <= width else instruction[:width - 1] + "…"


def _stage_names(report: dict[str, Any]) -> list[str]:
    """The first stages the report holds, in pipeline order (an older report: BM25 only)."""
    return [name for name in STAGE_LABELS if name in report]


def _first_stage_line(report: dict[str, Any]) -> str:
    fed = report.get("first_stage", "bm25")
    embedder = report.get("embedding_model") or "?"
    if fed == "dense":
        what = f"dense ({embedder} at {report.get('embedding_url')})"
    elif fed == "hybrid":
        what = f"hybrid (BM25 + dense by {embedder}, RRF k={report['rrf_k']:g})"
    else:
        what = STAGE_LABELS.get(fed, fed)
    return f"first stage {what} top-{report['top_k']}, reranked by {report.get('model') or '?'} at {report['reranker']}"


def format_report(report: dict[str, Any]) -> str:
    """Tables: every stage's metrics (one row per stage when there are several first stages), each first
    stage vs reranked per instruction, a sweep summary when there are several, per-query rows."""
    stage_names = _stage_names(report)
    fed = report.get("first_stage", "bm25")
    fed_label = STAGE_LABELS.get(fed, fed)
    reranked_label = f"{fed_label}+rerank"
    names = list(report[fed])
    out = [
        f"rerankd eval: {report['dataset']} (split {report['split']}, {report['queries']} queries, "
        f"{report['documents']} documents, language {report['language']})",
        _first_stage_line(report),
    ]
    top = [n for n in names if n.endswith(f"@{max(report['ks'])}")]
    if len(stage_names) > 1:
        rows = [[STAGE_LABELS[s], *[_num(report[s][n]) for n in top]] for s in stage_names]
        for run in report["runs"]:
            label = (reranked_label if len(report["runs"]) == 1
                     else f"{reranked_label} [{_label(run['instruction'], 30)}]")
            rows.append([label, *[_num(run["reranked"][n]) for n in top]])
        out += ["", _table(["stage", *top], rows)]
    for run in report["runs"]:
        out += ["", f"instruction: {_label(run['instruction'], 100)}"]
        rows = [[n, *[_num(report[s][n]) for s in stage_names], _num(run["reranked"][n]), _lift(run["lift"][n])]
                for n in names]
        lift = "lift" if len(stage_names) == 1 else f"lift over {fed_label}"
        out.append(_table(["metric", *[STAGE_LABELS[s] for s in stage_names], reranked_label, lift], rows))
    if len(report["runs"]) > 1:
        header = ["instruction sweep", *[h for n in top for h in (n, "lift")]]
        rows = [[f"{fed_label} (no reranking)", *[h for n in top for h in (_num(report[fed][n]), "")]]]
        rows += [[_label(run["instruction"]), *[h for n in top for h in (_num(run["reranked"][n]),
                                                                         _lift(run["lift"][n]))]]
                 for run in report["runs"]]
        out += ["", _table(header, rows)]
    if "per_query" in report:
        main = names[len(report["ks"]) - 1]  # ndcg at the largest k
        header = ["query", f"{fed_label} {main}", *[f"run {i + 1}" for i in range(len(report["runs"]))]]
        if len(report["runs"]) == 1:
            header = ["query", f"{fed_label} {main}", f"reranked {main}", "delta"]
        rows = []
        for row in report["per_query"]:
            reranked = [r[main] for r in row["reranked"]]
            cells = [row["query_id"], _num(row[fed][main]), *map(_num, reranked)]
            if len(reranked) == 1:
                cells.append(f"{reranked[0] - row[fed][main]:+.4f}")
            rows.append(cells)
        out += ["", "per query:", _table(header, rows)]
    return "\n".join(out)
