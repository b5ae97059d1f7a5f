"""Turning load samples into numbers people compare: rates, latency percentiles, a table, a plot."""

from __future__ import annotations

import json
import math
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rerankd.benchmark.loadgen import LoadResult

__all__ = ["cpu_name", "markdown_table", "percentile", "plot_rows", "summarize", "write_result"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between order statistics.

    Same definition as ``numpy.percentile``'s default, so numbers compare with other tools; NaN for
    no values (a scenario where every request failed has no latency to report, not a zero latency).
    """
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(result: LoadResult) -> dict[str, Any]:
    """One report row: rates over the phase's wall time, percentiles over successful requests only."""
    ok = [s for s in result.samples if s.ok]
    lat = [s.latency_s for s in ok]
    wall = result.wall_s if result.wall_s > 0 else math.nan
    pairs = sum(s.pairs for s in ok)
    tokens = sum(s.tokens for s in ok)
    return {
        "workload": result.workload,
        "n_docs": result.n_docs,
        "mode": result.mode,
        "concurrency": result.concurrency,
        "target_qps": result.target_qps,
        "requests": len(result.samples),
        "ok": len(ok),
        "errors": sum(1 for s in result.samples if not s.ok),
        "errors_by_status": result.errors,
        "wall_s": result.wall_s,
        "requests_per_s": len(ok) / wall,
        "pairs_per_s": pairs / wall,
        "tokens_per_s": tokens / wall,
        "latency_p50_s": percentile(lat, 50),
        "latency_p90_s": percentile(lat, 90),
        "latency_p99_s": percentile(lat, 99),
        "latency_max_s": max(lat) if lat else math.nan,
        "peak_rss_mib": None if result.peak_rss_bytes is None else result.peak_rss_bytes / 2**20,
    }


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.{digits}f}"
    return str(value)


def _load_label(row: dict[str, Any]) -> str:
    if row["mode"] == "closed":
        return f"C={row['concurrency']}"
    if row["mode"] == "open":
        return f"{_fmt(row['target_qps'])} req/s"
    return str(row.get("load") or "—")


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows of :func:`summarize` (and baseline rows) as a markdown table."""
    header = ("| workload | mode | load | requests (errors) | pairs/s | tokens/s | p50 s | p90 s | p99 s "
              "| peak RSS MiB | × baseline |")
    lines = [header, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        load = _load_label(r)
        lines.append(
            f"| {r['workload']} | {r['mode']} | {load} | {r['requests']} ({r['errors']}) | {_fmt(r['pairs_per_s'])} "
            f"| {_fmt(r['tokens_per_s'], 0)} | {_fmt(r['latency_p50_s'], 3)} | {_fmt(r['latency_p90_s'], 3)} "
            f"| {_fmt(r['latency_p99_s'], 3)} | {_fmt(r.get('peak_rss_mib'), 0)} "
            f"| {_fmt(r.get('speedup_vs_baseline'))} |"
        )
    return "\n".join(lines)


def plot_rows(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "rerankd bench") -> Path:
    """Pairs/s and p50/p90/p99 latency per scenario, side by side, as a PNG (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['workload']}\n{r['mode']} {_load_label(r)}" for r in rows]
    x = list(range(len(rows)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(rows) + 4), 4.8))
    ax1.bar(x, [r["pairs_per_s"] for r in rows], color="#4c72b0")
    ax1.set_ylabel("pairs / s")
    ax1.set_title("throughput")
    width = 0.27
    for k, (key, color) in enumerate([("latency_p50_s", "#55a868"), ("latency_p90_s", "#dd8452"),
                                      ("latency_p99_s", "#c44e52")]):
        ax2.bar([i + (k - 1) * width for i in x], [r[key] for r in rows], width, label=key.split("_")[1], color=color)
    ax2.set_ylabel("seconds")
    ax2.set_title("latency")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_result(path: str | Path, result: dict[str, Any]) -> Path:
    """Write a benchmark's JSON result (its command included), creating the folder; say where."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return out


def cpu_name() -> str:
    """The CPU model as ``/proc/cpuinfo`` names it (``platform.processor()`` is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
