"""CPU the gateway spends per shadow comparison, by answer size: parsing both answers, checking the shadow's shape,
and computing drift, Spearman's rho and the top-10 overlap (what :mod:`rerankd.gateway.shadow` runs in a worker
thread for each compared request).

    python bench/shadow_compare_cost.py

Process CPU time (not wall time), so other load on the machine inflates it less; random scores, no ties.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from rerankd.gateway.agreement import compare_scores, scores_of
from rerankd.gateway.answers import AnswerShape, check_answer
from rerankd.gateway.tokens import parse_answer


def _answer(rng: random.Random, documents: int) -> bytes:
    results = sorted(({"index": i, "relevance_score": rng.random()} for i in range(documents)),
                     key=lambda r: -float(r["relevance_score"]))
    return json.dumps({"id": "x", "model": "m", "results": results, "usage": {"prompt_tokens": 1}}).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000", help="documents per answer, comma-separated")
    args = parser.parse_args()
    rng = random.Random(0)
    for documents in (int(size) for size in args.sizes.split(",")):
        live, shadow = _answer(rng, documents), _answer(rng, documents)
        repeats = max(20, 20000 // documents)
        started = time.process_time()
        for _ in range(repeats):
            shadow_answer = parse_answer(shadow)
            check_answer(AnswerShape.RERANK, shadow_answer, documents)
            compare_scores(scores_of(AnswerShape.RERANK, parse_answer(live)),
                           scores_of(AnswerShape.RERANK, shadow_answer), 10)
        per = (time.process_time() - started) / repeats * 1000
        print(f"{documents:5d} documents: {per:.2f} ms CPU per comparison")


if __name__ == "__main__":
    main()
