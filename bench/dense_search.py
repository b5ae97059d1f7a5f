"""``rerankd eval``'s dense search: exact numpy cosine top-k against faiss HNSW, time and recall by corpus size.

Why: ``--dense-index auto`` searches exactly up to ``EXACT_MAX_DOCUMENTS`` documents and with an HNSW graph
above; this measures what each costs (search time per query, HNSW build time) and what HNSW loses (its
recall of the exact top-k), on random unit vectors of the Qwen3-Embedding-0.6B width (1024). Random vectors
are the hard case for HNSW (no cluster structure), so its recall on real embeddings is at least this.

Usage::

    python bench/dense_search.py --sizes 10000,50000,100000 --queries 200 --dim 1024 --top-k 100 \
        --out bench/results/dense_search.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from benchlib.results import write_result
from rerankd.evaluation.dense import build_hnsw, exact_top_k, hnsw_top_k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,50000,100000", help="corpus sizes, comma-separated")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--top-k", type=int, default=100)
    parser.add_argument("--no-hnsw", action="store_true", help="exact search only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    rows = []
    for n in [int(s) for s in args.sizes.split(",")]:
        docs = rng.standard_normal((n, args.dim), dtype=np.float32)
        t0 = time.perf_counter()
        exact = exact_top_k(queries, docs, args.top_k)
        exact_s = time.perf_counter() - t0
        row: dict[str, float | int | None] = {"documents": n, "exact_ms_per_query": 1000 * exact_s / args.queries}
        if not args.no_hnsw:
            t0 = time.perf_counter()
            index = build_hnsw(docs)
            build_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            approx = hnsw_top_k(queries, docs, args.top_k, index=index)
            search_s = time.perf_counter() - t0
            recall = np.mean([len(set(a.tolist()) & set(e.tolist())) / len(e)
                              for a, e in zip(approx.indices, exact.indices, strict=True)])
            row |= {"hnsw_build_s": build_s, "hnsw_ms_per_query": 1000 * search_s / args.queries,
                    "hnsw_recall_of_exact": float(recall)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        meta = {"queries": args.queries, "dim": args.dim, "top_k": args.top_k, "faiss_threads": None}
        if not args.no_hnsw:
            import faiss
            meta["faiss_threads"] = faiss.omp_get_max_threads()
        write_result(args.out, {**meta, "rows": rows})


if __name__ == "__main__":
    main()
