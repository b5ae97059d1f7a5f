"""The CrossEncoder baseline scores what the model card scores: fp32, same texts, same token lists.

``build_sequence_classifier`` turns the causal reranker into a one-logit ``Qwen3ForSequenceClassification``
whose row is ``w_yes − w_no``; sentence-transformers applies a sigmoid. This checks that the result equals
the card recipe (softmax over [no, yes]) before the CrossEncoder is timed as a baseline.

Usage::

    python bench/cross_encoder_parity.py [--docs 8]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from benchlib.agreement import compare_scores
from benchlib.results import write_result
from rerankd.benchmark.reference import CardRecipe, CrossEncoderBaseline, build_sequence_classifier
from rerankd.benchmark.workload import make_workload

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="/work/models/qwen3-reranker-0.6b-random")
    p.add_argument("--docs", type=int, default=8)
    p.add_argument("--doc-tokens", default="240-272")
    p.add_argument("--out", default=str(HERE / "results" / "cross_encoder_parity.json"))
    args = p.parse_args(argv)
    torch.manual_seed(0)
    card = CardRecipe(args.model, dtype="float32")
    request = make_workload(card.tokenizer, args.docs, args.doc_tokens, seed=0, variants=1).requests[0]
    card_scores = card.score(request.query, request.documents)
    card_ids = card.prompt_ids(request.query, request.documents)
    card.close()
    cls_dir = build_sequence_classifier(args.model, Path(tempfile.gettempdir()) / "rerankd-seq-cls" / Path(args.model).name)
    ce = CrossEncoderBaseline(cls_dir, dtype="float32")
    ce_scores = ce.score(request.query, request.documents)
    result = {
        "command": "python bench/cross_encoder_parity.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "docs": args.docs, "dtype": "float32",
        "token_lists_identical": ce.prompt_ids(request.query, request.documents) == card_ids,
        "card_scores": card_scores, "cross_encoder_scores": ce_scores,
        **compare_scores(card_scores, ce_scores, k=min(10, args.docs)),
    }
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_scores")}, indent=1))
    out = Path(args.out)
    write_result(out, result)


if __name__ == "__main__":
    main()
