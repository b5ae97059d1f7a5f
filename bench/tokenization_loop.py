"""Tokenization off the event loop: how long the loop would stall per request if the server tokenized inline.

``RerankEngine.score`` runs ``PromptBuilder.build`` through ``asyncio.to_thread``. This measures, for
1 query × N documents, the build time and the worst event-loop stall seen by a 1 ms ticker while one
request is tokenized (a) inline in a coroutine and (b) in a thread, as the server does. The stall is
what every other request on that server (health checks, queued responses) waits.

Usage::

    python bench/tokenization_loop.py [--docs 64,1000] [--doc-tokens mixed:64-2048] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

from benchlib.results import write_result
from rerankd.benchmark.workload import load_tokenizer, make_workload
from rerankd.engine.prompt import PromptBuilder

HERE = Path(__file__).resolve().parent


async def _max_stall(work_inline: bool, builder: PromptBuilder, query: str, docs: list[str]) -> tuple[float, float]:
    """(worst ticker delay beyond its 1 ms period, build seconds) while one request is tokenized."""
    stop = False
    worst = 0.0

    async def ticker() -> None:
        nonlocal worst
        last = time.perf_counter()
        while not stop:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            worst = max(worst, now - last - 0.001)
            last = now

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    if work_inline:
        builder.build(query, docs)
    else:
        await asyncio.to_thread(builder.build, query, docs)
    seconds = time.perf_counter() - t0
    await asyncio.sleep(0.01)
    stop = True
    await task
    return worst, seconds


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="/work/models/qwen3-reranker-0.6b-random")
    p.add_argument("--docs", default="64,1000")
    p.add_argument("--doc-tokens", default="mixed:64-2048")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(HERE / "results" / "tokenization_loop.json"))
    args = p.parse_args(argv)
    tokenizer = load_tokenizer(args.model)
    builder = PromptBuilder(tokenizer, 8192)
    rows = []
    for n in [int(x) for x in args.docs.split(",")]:
        request = make_workload(tokenizer, n, args.doc_tokens, seed=0, variants=1).requests[0]
        for inline in (True, False):
            stalls, builds = [], []
            for _ in range(args.repeats):
                stall, seconds = asyncio.run(_max_stall(inline, builder, request.query, request.documents))
                stalls.append(stall)
                builds.append(seconds)
            rows.append({"docs": n, "doc_tokens": args.doc_tokens, "tokens": sum(request.doc_tokens),
                         "where": "inline on the loop" if inline else "asyncio.to_thread (server default)",
                         "build_ms_median": 1000 * statistics.median(builds),
                         "max_loop_stall_ms_median": 1000 * statistics.median(stalls),
                         "max_loop_stall_ms_worst": 1000 * max(stalls)})
            print(json.dumps(rows[-1]), flush=True)
    lines = ["| docs | doc tokens | tokenization | build ms | worst loop stall ms (median of runs) |", "|---:|---|---|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['docs']} | {r['tokens']} | {r['where']} | {r['build_ms_median']:.0f} | {r['max_loop_stall_ms_median']:.1f} |")
    table = "\n".join(lines)
    print(table)
    command = "python bench/tokenization_loop.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    out = Path(args.out)
    write_result(out, {"command": command.strip(), "repeats": args.repeats, "rows": rows, "table_markdown": table})


if __name__ == "__main__":
    main()
