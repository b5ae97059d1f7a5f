"""``rerankd bench``: throughput and latency of a rerank URL, with in-process baselines on the same texts.

Example (a server on :8000 started with ``rerankd serve --model DIR``)::

    rerankd bench --url http://127.0.0.1:8000 --model DIR --docs 16,64 --doc-tokens mixed:64-2048 \\
        --mode closed --concurrency 1,4 --duration 60 --server-pid $(pgrep -f 'rerankd serve') \\
        --baseline card --out bench/results/bench.json
"""

from __future__ import annotations

import asyncio
import json
import platform
import shlex
import time
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx

from rerankd.options import env_option

__all__ = ["bench"]

T = TypeVar("T", int, float)


def _positive_list(text: str, kind: type[T], example: str) -> list[T]:
    """A flag's comma-separated positive values (``16,64`` docs, ``0.5,2`` QPS), or a usage error naming the fix."""
    noun = "integers" if kind is int else "numbers"
    try:
        values = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"{text!r}: want comma-separated {noun}, e.g. {example}") from exc
    if not values or any(v <= 0 for v in values):
        raise click.BadParameter(f"{text!r}: want positive {noun}")
    return values


@click.command("bench")
@env_option("--url", default="http://127.0.0.1:8000", help="Base URL of a rerankd server or gateway.")
@env_option("--api-key", default=None, show_default=False, help="Sent as `Authorization: Bearer KEY`.")
@env_option("--model", default=None,
            help="Model directory: its tokenizer sizes the documents, and --baseline runs it in-process. "
                 "Default: the real Qwen3 tokenizer shipped offline (no baselines).")
@env_option("--served-model-name", default=None, help="`model` field sent in each request (optional).")
@env_option("--path", "request_path", default="/v1/rerank", help="Rerank route to call.")
@env_option("--docs", default="16,64", help="Documents per request; one scenario per value (e.g. 16,64,256,1000).")
@env_option("--doc-tokens", default="mixed:64-2048",
            help="Document lengths in tokens: N (≈N ± 6%), LOW-HIGH (even spread) or mixed:LOW-HIGH (log-uniform).")
@env_option("--mode", type=click.Choice(["closed", "open", "both"]), default="closed",
            help="closed = C clients back to back; open = Poisson arrivals at --qps.")
@env_option("--concurrency", default="1,4", help="Closed-loop client counts, comma-separated.")
@env_option("--qps", default="1", help="Open-loop request rates, comma-separated.")
@env_option("--duration", type=click.FloatRange(min=0.1), default=30.0, help="Seconds of load per scenario.")
@env_option("--max-requests", type=click.IntRange(min=1), default=None,
            help="Closed loop: stop a scenario after this many requests even before --duration.")
@env_option("--warmup/--no-warmup", default=True, help="One untimed request per scenario first.")
@env_option("--timeout", type=click.FloatRange(min=0.1), default=600.0, help="Per-request timeout, seconds.")
@env_option("--seed", type=int, default=0, help="Workload seed (same seed, same texts).")
@env_option("--variants", type=click.IntRange(min=1), default=4, help="Distinct requests per scenario.")
@env_option("--server-pid", type=int, default=None, help="Sample this process's peak RSS (psutil).")
@env_option("--baseline", "baselines", multiple=True, type=click.Choice(["card", "cross-encoder"]),
            help="Also time the model card recipe / sentence-transformers CrossEncoder in-process on the "
                 "first request of each scenario (needs --model). Repeatable.")
@env_option("--baseline-dtype", type=click.Choice(["float32", "bfloat16"]), default="bfloat16")
@env_option("--baseline-batch", type=click.IntRange(min=1), default=8, help="Pairs per baseline forward.")
@env_option("--out", default="rerankd-bench.json", help="JSON report path (the PNG goes next to it).")
@env_option("--plot/--no-plot", default=True, help="Write a PNG plot next to the JSON (needs matplotlib).")
def bench(**opts: Any) -> None:
    """Benchmark a rerank URL: pairs/s, tokens/s, p50/p90/p99 latency, errors, peak server RSS."""
    from rerankd.benchmark.loadgen import RssSampler, run_closed_loop, run_open_loop
    from rerankd.benchmark.report import markdown_table, plot_rows, summarize
    from rerankd.benchmark.workload import load_tokenizer, make_workload

    docs_list = _positive_list(opts["docs"], int, "16,64")
    concurrency = _positive_list(opts["concurrency"], int, "16,64")
    qps_list = _positive_list(opts["qps"], float, "0.5,2")
    if opts["baselines"] and not opts["model"]:
        raise click.UsageError("--baseline needs --model DIR (the weights the baselines run)")
    url = opts["url"].rstrip("/")
    headers = {"Authorization": f"Bearer {opts['api_key']}"} if opts["api_key"] else {}
    try:
        info = httpx.get(f"{url}/info", headers=headers, timeout=10).json()
    except (httpx.HTTPError, ValueError) as exc:
        raise click.ClickException(f"cannot reach {url}/info ({exc}); is the server or gateway running?") from exc

    tokenizer = load_tokenizer(opts["model"])
    rows: list[dict[str, Any]] = []
    workloads = {}
    for n_docs in docs_list:
        t0 = time.perf_counter()
        workload = make_workload(tokenizer, n_docs, opts["doc_tokens"], seed=opts["seed"], variants=opts["variants"])
        workloads[n_docs] = workload
        click.echo(f"[{workload.name}] built {len(workload.requests)} requests in {time.perf_counter() - t0:.1f}s "
                   f"(mean {workload.doc_tokens_mean:.0f} tokens/doc)", err=True)
        phases: list[tuple[str, Any]] = []
        if opts["mode"] in ("closed", "both"):
            phases += [("closed", c) for c in concurrency]
        if opts["mode"] in ("open", "both"):
            phases += [("open", q) for q in qps_list]
        for mode, level in phases:
            common = dict(api_key=opts["api_key"], path=opts["request_path"], model=opts["served_model_name"],
                          timeout_s=opts["timeout"])
            if opts["warmup"]:  # one request, whatever --duration says: first-call costs stay out of the numbers
                asyncio.run(run_closed_loop(url, workload, concurrency=1, duration_s=opts["timeout"], max_requests=1,
                                            **common))
            with RssSampler(opts["server_pid"]) as rss:
                if mode == "closed":
                    result = asyncio.run(run_closed_loop(url, workload, concurrency=level, duration_s=opts["duration"],
                                                         max_requests=opts["max_requests"], **common))
                else:
                    result = asyncio.run(run_open_loop(url, workload, qps=level, duration_s=opts["duration"],
                                                       seed=opts["seed"], **common))
            result.peak_rss_bytes = rss.peak
            row = summarize(result)
            rows.append(row)
            click.echo(f"  {mode} {level}: {row['ok']}/{row['requests']} ok, {row['pairs_per_s']:.2f} pairs/s, "
                       f"p50 {row['latency_p50_s']:.3f}s p99 {row['latency_p99_s']:.3f}s", err=True)

    baseline_rows = _run_baselines(opts, workloads) if opts["baselines"] else []
    _add_ratios(rows, baseline_rows)
    all_rows = rows + baseline_rows
    table = markdown_table(all_rows)
    click.echo(table)
    out = Path(opts["out"])
    report = {
        "command": _command_line(click.get_current_context()),
        "url": url,
        "server_info": info,
        "machine": {"python": platform.python_version(), "cpu_count": _cpu_count(), "platform": platform.platform()},
        "doc_tokens": opts["doc_tokens"],
        "rows": all_rows,
        "table_markdown": table,
        "notes": "latency counts from each request's send time (closed loop) or scheduled time (open loop); "
                 "rates are over the phase's wall time; percentiles over successful requests",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    click.echo(f"wrote {out}", err=True)
    if opts["plot"]:
        try:
            png = plot_rows(all_rows, out.with_suffix(".png"), title=f"rerankd bench: {url}")
            click.echo(f"wrote {png}", err=True)
        except ImportError:
            click.echo("matplotlib missing (pip install 'rerankd[bench]'): no plot", err=True)


def _command_line(ctx: click.Context) -> str:
    """The flags this run was given (from the command line or the environment), to repeat it exactly."""
    parts = ["rerankd", "bench"]
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or param.name is None:
            continue
        source = ctx.get_parameter_source(param.name)
        if source in (None, click.core.ParameterSource.DEFAULT):
            continue
        value = ctx.params[param.name]
        if param.name == "api_key":
            value = "***"
        if param.is_flag and param.secondary_opts:
            parts.append(param.opts[0] if value else param.secondary_opts[0])
        elif param.multiple:
            for v in value:
                parts += [param.opts[0], shlex.quote(str(v))]
        else:
            parts += [param.opts[0], shlex.quote(str(value))]
    return " ".join(parts)


def _cpu_count() -> int | None:
    import os

    return os.cpu_count()


def _run_baselines(opts: dict[str, Any], workloads: dict[int, Any]) -> list[dict[str, Any]]:
    """Time each baseline on each scenario's first request, after a two-document warm-up."""
    import tempfile

    from rerankd.benchmark.reference import CardRecipe, CrossEncoderBaseline, build_sequence_classifier

    rows: list[dict[str, Any]] = []
    for name in opts["baselines"]:
        if name == "card":
            scorer: Any = CardRecipe(opts["model"], dtype=opts["baseline_dtype"])
        else:
            classifier = build_sequence_classifier(opts["model"], Path(tempfile.gettempdir()) / "rerankd-seq-cls"
                                                   / Path(opts["model"]).name)
            scorer = CrossEncoderBaseline(classifier, dtype=opts["baseline_dtype"])
        for n_docs, workload in workloads.items():
            request = workload.requests[0]
            scorer.score(request.query, request.documents[:2], batch=opts["baseline_batch"])
            t0 = time.perf_counter()
            scorer.score(request.query, request.documents, batch=opts["baseline_batch"])
            seconds = time.perf_counter() - t0
            prompt_tokens = sum(request.doc_tokens) + n_docs * 80  # template + query ≈ 80 tokens per pair
            rows.append({
                "workload": workload.name, "n_docs": n_docs, "mode": "in-process",
                "load": f"{name} ({opts['baseline_dtype']}, batch {opts['baseline_batch']})",
                "baseline": name, "requests": 1, "ok": 1, "errors": 0, "wall_s": seconds,
                "pairs_per_s": n_docs / seconds, "tokens_per_s": prompt_tokens / seconds,
                "latency_p50_s": seconds, "latency_p90_s": seconds, "latency_p99_s": seconds,
                "peak_rss_mib": None,
            })
            click.echo(f"  baseline {name} on {workload.name}: {seconds:.2f}s", err=True)
        scorer.close()
    return rows


def _add_ratios(rows: list[dict[str, Any]], baseline_rows: list[dict[str, Any]]) -> None:
    """``speedup_vs_baseline``: pairs/s over the first baseline's pairs/s on the same document count."""
    if not baseline_rows:
        return
    first = baseline_rows[0]["baseline"]
    by_docs = {r["n_docs"]: r["pairs_per_s"] for r in baseline_rows if r["baseline"] == first}
    for r in rows + baseline_rows:
        base = by_docs.get(r["n_docs"])
        if base:
            r["speedup_vs_baseline"] = r["pairs_per_s"] / base
            r["baseline_for_ratio"] = first
