"""Long documents: what scoring all of a document in chunks costs against cutting it, in-process.

64 documents of 8k tokens (``--docs``, ``--doc-tokens``) and one query go through rerankd's own engine
(``load_engine``: PromptBuilder → DynamicBatcher → TorchBackend, the server's path without HTTP), four ways:

* ``truncate``: a ``--chunk-len`` model length, each document cut to what fits (today's default answer);
* ``chunks``: the same model length, ``max_chunks_per_doc`` large enough to cover every document, no overlap;
* ``chunks+overlap``: the same with ``chunk_overlap_tokens`` = ``--overlap``;
* ``whole`` (with ``--whole``): a model length that holds a whole document, one long prompt each (what
  chunking replaces; its attention grows with the square of the length, so it is slow on a CPU).

The variants run interleaved (truncate, chunks, …, truncate, chunks, …) ``--repeats`` times after a warm-up
request of two documents each; the table reports the median seconds, prompts and prompt tokens
(``usage.prompt_tokens``).

Usage::

    python bench/long_documents.py --model /work/models/tiny --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchlib.results import write_result

HERE = Path(__file__).resolve().parent


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    from rerankd.benchmark.workload import make_workload
    from rerankd.engine.config import EngineConfig
    from rerankd.engine.engine import RerankEngine, load_engine
    from rerankd.protocol import RerankTask

    torch.set_num_threads(args.threads)

    def engine(max_model_len: int) -> RerankEngine:
        config = EngineConfig(model=args.model, backend="torch", device="cpu", dtype=args.dtype,
                              max_model_len=max_model_len, compile=args.compile, max_request_tokens=10**8)
        loaded = load_engine(config)
        loaded.batcher.start()
        return loaded

    short = engine(args.chunk_len)
    whole = engine(args.doc_tokens + 512) if args.whole else None
    try:
        request = make_workload(short.builder.tokenizer, args.docs, f"{args.doc_tokens}-{args.doc_tokens}",
                                seed=3, variants=1).requests[0]
        chunks = math.ceil(args.doc_tokens / (args.chunk_len - 128)) + 1  # more than enough at any head length
        step_chunks = math.ceil(args.doc_tokens / (args.chunk_len - 128 - args.overlap)) + 1
        variants: dict[str, tuple[RerankEngine, RerankTask]] = {
            "truncate": (short, RerankTask(request.query, request.documents)),
            "chunks": (short, RerankTask(request.query, request.documents, max_chunks_per_doc=chunks)),
            "chunks+overlap": (short, RerankTask(request.query, request.documents, max_chunks_per_doc=step_chunks,
                                                 chunk_overlap_tokens=args.overlap)),
        }
        if whole is not None:
            variants["whole"] = (whole, RerankTask(request.query, request.documents))
        times: dict[str, list[float]] = {name: [] for name in variants}
        outcomes: dict[str, Any] = {}
        for name, (eng, task) in variants.items():  # warm-up: two documents each, untimed
            await eng.score(dataclasses.replace(task, documents=task.documents[:2]))
            print(f"[warm-up {name}] done", flush=True)
        for rep in range(args.repeats):
            for name, (eng, task) in variants.items():
                started = time.perf_counter()
                outcomes[name] = await eng.score(task)
                times[name].append(time.perf_counter() - started)
                print(f"[{rep + 1}/{args.repeats} {name}] {times[name][-1]:.1f} s", flush=True)
        rows = []
        for name, (eng, task) in variants.items():
            outcome = outcomes[name]
            seconds = statistics.median(times[name])
            prompts = _prompts(eng, task)
            rows.append({
                "variant": name, "model_len": eng.max_model_len, "max_chunks_per_doc": task.max_chunks_per_doc,
                "chunk_overlap_tokens": task.chunk_overlap_tokens, "prompts": prompts,
                "prompt_tokens": outcome.prompt_tokens, "seconds": times[name], "median_seconds": seconds,
                "tokens_per_s": outcome.prompt_tokens / seconds,
                "documents_cut": sum(outcome.truncated),
                "best_chunk_not_first": None if outcome.chunk_index is None else sum(
                    1 for k in outcome.chunk_index if k > 0),
            })
        return rows
    finally:
        await short.close()
        if whole is not None:
            await whole.close()


def _prompts(engine: Any, task: Any) -> int:
    """How many prompts the engine scored for ``task``: the builder's own count (every chunk of every document)."""
    return len(engine.builder.build(task.query, task.documents, max_chunks=task.max_chunks_per_doc,
                                    chunk_overlap=task.chunk_overlap_tokens).tails)


def table(rows: list[dict[str, Any]]) -> str:
    base = next(r for r in rows if r["variant"] == "truncate")
    lines = ["| variant | model length | prompts | prompt tokens | median s | tokens/s | × truncate time | "
             "docs cut | best chunk not chunk 0 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        best = "—" if r["best_chunk_not_first"] is None else str(r["best_chunk_not_first"])
        lines.append(f"| {r['variant']} | {r['model_len']} | {r['prompts']} | {r['prompt_tokens']} | "
                     f"{r['median_seconds']:.1f} | {r['tokens_per_s']:.0f} | "
                     f"{r['median_seconds'] / base['median_seconds']:.2f} | {r['documents_cut']} | {best} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--model", default="/work/models/tiny", help="a model directory (default: the tiny test shape)")
    p.add_argument("--docs", type=int, default=64)
    p.add_argument("--doc-tokens", type=int, default=8192)
    p.add_argument("--chunk-len", type=int, default=1024, help="the model length of the truncate/chunks variants")
    p.add_argument("--overlap", type=int, default=128, help="chunk_overlap_tokens of the chunks+overlap variant")
    p.add_argument("--whole", action="store_true", help="also score each document whole in one long prompt")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--compile", default="off", choices=["auto", "on", "off"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", default=str(HERE / "results" / "long_documents.json"))
    args = p.parse_args(argv)
    rows = asyncio.run(run(args))
    text = table(rows)
    print(text)
    command = "python bench/long_documents.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    out = Path(args.out)
    write_result(out, {"command": command, "threads": args.threads, "dtype": args.dtype,
                       "compile": args.compile, "load_average": os.getloadavg(), "rows": rows,
                       "table_markdown": text})


if __name__ == "__main__":
    main()
