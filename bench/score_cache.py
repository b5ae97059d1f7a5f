"""The exact score cache on a workload with repeated queries: pagination and retries.

A search front end asks for the top documents of a query page by page (page 2 re-sends most of page 1's
candidates with new ones behind them), and clients retry requests that timed out. This script replays such
a trace through one in-process engine with ``--score-cache`` on and one with it off (same model, dtype,
kernels, batch-invariant scoring), alternating request by request, and prints the hit rate, the latency of
each and whether every cached answer equals the uncached one bit for bit.

Usage::

    python bench/score_cache.py --model /work/models/tiny --queries 6 --pages 3 --page-size 8
    python bench/score_cache.py --model /work/models/qwen3-reranker-0.6b-random --queries 3 --pages 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time

from rerankd.engine.config import EngineConfig
from rerankd.engine.engine import RerankEngine, load_engine
from rerankd.observability.metrics import ServerMetrics
from rerankd.protocol import RerankTask

WORDS = ["panda", "bamboo", "china", "forest", "river", "mountain", "search", "ranking", "model", "query", "document", "index", "vector", "score", "relevance", "retrieval", "language", "cache", "token", "layer", "attention", "kernel"]


def trace(queries: int, pages: int, page_size: int, overlap: float, retry_rate: float, seed: int) -> list[RerankTask]:
    """Each query's pages in order; page p+1 keeps ``overlap`` of page p's documents; some requests sent twice."""
    rng = random.Random(seed)
    out: list[RerankTask] = []
    for q in range(queries):
        query = " ".join(rng.choice(WORDS) for _ in range(6)) + f" #{q}"
        pool = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120))) for _ in range(page_size * pages)]
        keep = int(page_size * overlap)
        start = 0
        for _ in range(pages):
            task = RerankTask(query, pool[start:start + page_size])
            out.append(task)
            if rng.random() < retry_rate:
                out.append(task)  # a retry after a client timeout
            start += page_size - keep
    return out


async def replay(engines: dict[str, RerankEngine], tasks: list[RerankTask]) -> dict[str, list[float]]:
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    answers: dict[str, list[list[float]]] = {name: [] for name in engines}
    for e in engines.values():
        e.batcher.start()
        await e.score(RerankTask("warm-up, not timed", ["first passes prepare threads and kernels"]))
    names = list(engines)
    for i, task in enumerate(tasks):
        # Alternate which goes first: the load falls on both alike, and neither always meets a shape the
        # other's pass already prepared (oneDNN's primitive cache is per process).
        for name in names if i % 2 == 0 else names[::-1]:
            e = engines[name]
            started = time.perf_counter()
            outcome = await e.score(task)
            seconds[name].append(time.perf_counter() - started)
            answers[name].append(outcome.raw_scores)
    for e in engines.values():
        await e.close()
    assert answers["cache"] == answers["no cache"], "a cached score differs from the recomputed one"
    return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--compile", default="off", help="off keeps start-up short; the cache works alike on every path")
    p.add_argument("--queries", type=int, default=6)
    p.add_argument("--pages", type=int, default=3)
    p.add_argument("--page-size", type=int, default=8)
    p.add_argument("--overlap", type=float, default=0.5, help="share of a page's documents the next page repeats")
    p.add_argument("--retry-rate", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    tasks = trace(args.queries, args.pages, args.page_size, args.overlap, args.retry_rate, args.seed)
    engines = {}
    metrics = {}
    for name, on in (("cache", True), ("no cache", False)):
        metrics[name] = ServerMetrics()
        engines[name] = load_engine(EngineConfig(model=args.model, device="cpu", dtype=args.dtype,
                                                 compile=args.compile, score_cache=on), metrics[name])
    seconds = asyncio.run(replay(engines, tasks))
    m = metrics["cache"].registry
    hits = m.get_sample_value("rerankd_score_cache_hits_total") or 0.0
    misses = m.get_sample_value("rerankd_score_cache_misses_total") or 0.0
    load = os.getloadavg()[0]
    print(f"{len(tasks)} requests, {sum(len(t.documents) for t in tasks)} pairs; load average {load:.1f}")
    print(f"hit rate {hits / (hits + misses):.1%} ({hits:.0f} hits, {misses:.0f} misses); cached answers equal the "
          "recomputed ones bit for bit")
    for name, s in seconds.items():
        print(f"{name:9s} total {sum(s):7.2f} s  mean {statistics.mean(s) * 1000:8.1f} ms  "
              f"median {statistics.median(s) * 1000:8.1f} ms")
    print("per request (ms):", {n: [round(x * 1000) for x in s] for n, s in seconds.items()})
    print(f"speed-up {sum(seconds['no cache']) / sum(seconds['cache']):.2f}x")


if __name__ == "__main__":
    main()
