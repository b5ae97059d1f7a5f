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
from rerankd.evaluation.runner import FirstStage, RerankRun

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
) -> dict[str, Any]:
    """The report: ``settings`` as given, BM25 metrics, and per run the reranked metrics and lifts."""
    names = metric_names(ks)
    report: dict[str, Any] = dict(settings)
    report["bm25"] = {n: first_stage.metrics[n] for n in names}
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
        report["per_query"] = [
            {
                "query_id": q,
                "query": text,
                "bm25": first_stage.per_query[q],
                "reranked": [run.per_query[q] for run in runs],
                "bm25_top": first_stage.candidates[q][:max(ks)],
                "reranked_top": [run.rankings[q][:max(ks)] for run in runs],
            }
            for q, text in queries.items()
        ]
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


def format_report(report: dict[str, Any]) -> str:
    """Tables: BM25 vs reranked per instruction, a sweep summary when there are several, per-query rows."""
    names = list(report["bm25"])
    out = [
        f"rerankd eval: {report['dataset']} (split {report['split']}, {report['queries']} queries, "
        f"{report['documents']} documents, language {report['language']})",
        f"first stage BM25 top-{report['top_k']}, reranked by {report.get('model') or '?'} at {report['reranker']}",
    ]
    for run in report["runs"]:
        out += ["", f"instruction: {_label(run['instruction'], 100)}"]
        rows = [[n, _num(report["bm25"][n]), _num(run["reranked"][n]), _lift(run["lift"][n])] for n in names]
        out.append(_table(["metric", "BM25", "BM25+rerank", "lift"], rows))
    if len(report["runs"]) > 1:
        top = [n for n in names if n.endswith(f"@{max(report['ks'])}")]
        header = ["instruction sweep", *[h for n in top for h in (n, "lift")]]
        rows = [["BM25 (no reranking)", *[h for n in top for h in (_num(report["bm25"][n]), "")]]]
        rows += [[_label(run["instruction"]), *[h for n in top for h in (_num(run["reranked"][n]),
                                                                         _lift(run["lift"][n]))]]
                 for run in report["runs"]]
        out += ["", _table(header, rows)]
    if "per_query" in report:
        main = names[len(report["ks"]) - 1]  # ndcg at the largest k
        header = ["query", f"BM25 {main}", *[f"run {i + 1}" for i in range(len(report["runs"]))]]
        if len(report["runs"]) == 1:
            header = ["query", f"BM25 {main}", f"reranked {main}", "delta"]
        rows = []
        for row in report["per_query"]:
            reranked = [r[main] for r in row["reranked"]]
            cells = [row["query_id"], _num(row["bm25"][main]), *map(_num, reranked)]
            if len(reranked) == 1:
                cells.append(f"{reranked[0] - row['bm25'][main]:+.4f}")
            rows.append(cells)
        out += ["", "per query:", _table(header, rows)]
    return "\n".join(out)
