"""What the fill cut costs a bulk caller and saves a small one: the engine in-process, with and without it.

One bulk client scores ``--rounds`` requests of ``--docs`` documents of ``--words`` words one after another
(tenant ``bulk``) while a small client sends 3-document requests at ``--rate`` per second (tenant ``small``),
all through one :class:`~rerankd.engine.engine.RerankEngine` on the tiny model on the CPU, as ``rerankd serve``
runs it. Each variant is a ``fill_tokens`` of the batcher: ``full`` is the cut before it had one (a pass holding
a small request's first rows is filled with bulk rows up to ``--max-batch-tokens``), ``default`` is
``max_batch_tokens // 8``. Variants are interleaved (full, default, full, default, ...) so machine noise
spreads over both. Printed: each variant's bulk seconds per request and rows per second, the small requests'
p50/p99 (only those sent while a bulk request ran) and the forward passes the batcher ran. The forward
passes' own cost is the same in both: only which rows share a pass differs.

    python bench/batching_fill.py --model /work/models/tiny --max-batch-tokens 2048
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


async def one_round(engine: Any, bulk_docs: list[str], rate: float) -> tuple[float, list[float]]:
    """One bulk request with the small client running alongside: its seconds and the small latencies."""
    from rerankd.protocol import RerankTask

    small_latencies: list[float] = []
    done = asyncio.Event()

    async def small(i: int) -> None:
        started = time.perf_counter()
        await engine.score_all([RerankTask(query=f"query {i}", documents=["alpha", "beta gamma", "delta"])], "small")
        small_latencies.append(time.perf_counter() - started)

    async def small_client() -> None:
        tasks = []
        i = 0
        while not done.is_set():
            tasks.append(asyncio.create_task(small(i)))
            i += 1
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)

    client = asyncio.create_task(small_client())
    started = time.perf_counter()
    await engine.score_all([RerankTask(query="bulk", documents=bulk_docs)], "bulk")
    seconds = time.perf_counter() - started
    done.set()
    await client
    return seconds, small_latencies


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from rerankd.engine.batcher import FILL_SHARE
    from rerankd.engine.config import EngineConfig
    from rerankd.engine.engine import load_engine
    from rerankd.protocol import RerankTask

    engine = load_engine(EngineConfig(model=args.model, device="cpu", dtype="float32", max_model_len=args.max_model_len,
                                      max_batch_tokens=args.max_batch_tokens))
    variants = {"full": args.max_batch_tokens, "default": max(1, args.max_batch_tokens // FILL_SHARE)}
    engine.batcher.start()
    bulk_docs = [f"{i} " + " ".join(f"word{j % 97}" for j in range(args.words)) for i in range(args.docs)]
    await engine.score_all([RerankTask(query="warm", documents=bulk_docs[:8])])
    figures: dict[str, dict[str, list[float]]] = {name: {"bulk_s": [], "small": [], "passes": []} for name in variants}
    for _ in range(args.rounds):
        for name, fill in variants.items():
            engine.batcher.fill_tokens = fill
            before = engine.batcher._batches
            seconds, small = await one_round(engine, bulk_docs, args.rate)
            figures[name]["bulk_s"].append(seconds)
            figures[name]["small"].extend(small)
            figures[name]["passes"].append(engine.batcher._batches - before)
    await engine.close()
    return {
        "docs": args.docs, "words": args.words, "max_batch_tokens": args.max_batch_tokens, "rate": args.rate,
        "rounds": args.rounds,
        **{name: {"fill_tokens": variants[name],
                  "bulk_seconds_median": round(statistics.median(f["bulk_s"]), 3),
                  "bulk_rows_per_s": round(args.docs / statistics.median(f["bulk_s"]), 1),
                  "small_n": len(f["small"]),
                  "small_p50_ms": round(percentile(f["small"], 0.5) * 1000, 1),
                  "small_p99_ms": round(percentile(f["small"], 0.99) * 1000, 1),
                  "passes_per_bulk_request": statistics.median(f["passes"])}
           for name, f in figures.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="/work/models/tiny")
    parser.add_argument("--docs", type=int, default=500, help="documents of each bulk request")
    parser.add_argument("--words", type=int, default=300, help="words per bulk document")
    parser.add_argument("--rounds", type=int, default=3, help="bulk requests per variant")
    parser.add_argument("--rate", type=float, default=8.0, help="small requests per second")
    parser.add_argument("--max-batch-tokens", type=int, default=2048)
    parser.add_argument("--max-model-len", type=int, default=256)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))


if __name__ == "__main__":
    main()
