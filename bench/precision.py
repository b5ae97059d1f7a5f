"""bf16 vs fp32 score drift on the CPU: how big, where it enters, and what removes it at what cost.

Same workload as ``bench/cpu_throughput.py`` (one query × 64 documents of 240-272 tokens, Qwen3-Reranker
0.6B shape, random weights). The fp32 reference is rerankd's fp32 path, first checked against the
model card recipe in fp32 on ``--check-docs`` documents (the parity tests assert 1e-4 on the tiny model).

Variants, all on exactly the same token lists:

* ``bf16`` — rerankd's default on this CPU (weights, activations, residual stream in bf16).
* ``bf16-no-prefix`` — the same without shared-prefix reuse (one forward per full prompt).
* ``card-bf16`` — the model card recipe in bf16.
* ``autocast`` — fp32 weights and residual stream; ``torch.autocast(cpu, bf16)`` runs linears/attention
  in bf16 (fp32 accumulation inside oneDNN), norms, residual adds and the score in fp32.
* ``mkldnn-bf16`` — fp32 model; oneDNN computes fp32 matmuls with bf16 inputs
  (``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``), everything else fp32.

Then, on ``--layer-docs`` documents, the relative error of the last-token hidden state after every layer
(bf16 and autocast vs fp32), and the scale of the raw scores, to show where drift enters and why
random weights amplify it.

Usage::

    python bench/precision.py [--docs 64] [--check-docs 4] [--layer-docs 4]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchlib.agreement import compare_scores
from benchlib.cpu import mkldnn_bf16_matmuls
from benchlib.engine_path import engine_scores
from rerankd.benchmark.reference import NO_ID, YES_ID, CardRecipe
from rerankd.benchmark.report import write_result
from rerankd.benchmark.workload import one_request
from rerankd.engine.backends.torch_backend import TorchBackend
from rerankd.engine.prompt import PromptBuilder

HERE = Path(__file__).resolve().parent
MAX_LEN = 8192


def _logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def _backend(model: str, dtype: str, prefix_reuse: bool = True) -> TorchBackend:
    return TorchBackend(model, yes_token_id=YES_ID, no_token_id=NO_ID, max_model_len=MAX_LEN, device="cpu",
                        dtype=dtype, prefix_reuse=prefix_reuse)




def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="/work/models/qwen3-reranker-0.6b-random")
    p.add_argument("--docs", type=int, default=64)
    p.add_argument("--doc-tokens", default="240-272")
    p.add_argument("--check-docs", type=int, default=4)
    p.add_argument("--layer-docs", type=int, default=4)
    p.add_argument("--batch-tokens", type=int, default=8192)
    p.add_argument("--variants", default="bf16,bf16-no-prefix,card-bf16,autocast,mkldnn-bf16")
    p.add_argument("--out", default=str(HERE / "results" / "precision.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer, request = one_request(args.model, args.docs, args.doc_tokens)
    query, docs = request.query, request.documents
    builder = PromptBuilder(tokenizer, MAX_LEN)
    seconds: dict[str, float] = {}

    def run(name: str, fn: Any) -> list[float]:
        t0 = time.perf_counter()
        out = fn()
        seconds[name] = time.perf_counter() - t0
        print(f"[{name}] {seconds[name]:.1f}s", flush=True)
        return out

    fp32 = _backend(args.model, "float32")
    scores: dict[str, list[float]] = {}
    scores["fp32"] = run("fp32", lambda: engine_scores(fp32, builder, query, docs, max_batch_tokens=args.batch_tokens))

    card32 = CardRecipe(args.model, dtype="float32", max_length=MAX_LEN)
    check = run("card-fp32 (check)", lambda: card32.score(query, docs[: args.check_docs]))
    card32.close()
    reference_check = max(abs(a - b) for a, b in zip(check, scores["fp32"][: args.check_docs], strict=True))
    print(f"rerankd fp32 vs card fp32 on {args.check_docs} docs: max |Δ| = {reference_check:.2e}", flush=True)

    wanted = [v.strip() for v in args.variants.split(",") if v.strip()]
    bf16 = _backend(args.model, "bfloat16") if {"bf16", "bf16-no-prefix"} & set(wanted) else None
    for name in wanted:
        if name == "bf16":
            scores[name] = run(name, lambda: engine_scores(bf16, builder, query, docs, max_batch_tokens=args.batch_tokens))
        elif name == "bf16-no-prefix":
            bf16.prefix_reuse = False
            scores[name] = run(name, lambda: engine_scores(bf16, builder, query, docs, max_batch_tokens=args.batch_tokens))
            bf16.prefix_reuse = True
        elif name == "card-bf16":
            card = CardRecipe(args.model, dtype="bfloat16", max_length=MAX_LEN)
            scores[name] = run(name, lambda card=card: card.score(query, docs))
            card.close()
        elif name == "autocast":
            def autocast_scores() -> list[float]:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return engine_scores(fp32, builder, query, docs, max_batch_tokens=args.batch_tokens)
            scores[name] = run(name, autocast_scores)
        elif name == "mkldnn-bf16":
            def mkldnn_scores() -> list[float]:
                with mkldnn_bf16_matmuls():
                    return engine_scores(fp32, builder, query, docs, max_batch_tokens=args.batch_tokens)
            scores[name] = run(name, mkldnn_scores)
        else:
            raise SystemExit(f"unknown variant {name}")

    raw32 = [_logit(s) for s in scores["fp32"]]
    rows = []
    for name, s in scores.items():
        if name == "fp32":
            continue
        c = compare_scores(scores["fp32"], s)
        raw = [_logit(x) for x in s]
        rows.append({"variant": name, "seconds": seconds[name], **c,
                     "max_abs_delta_raw": max(abs(a - b) for a, b in zip(raw32, raw, strict=True)),
                     "median_abs_delta_raw": statistics.median(abs(a - b) for a, b in zip(raw32, raw, strict=True))})

    # Where drift enters: per-layer relative error of the last-token hidden state, on full prompts.
    group = builder.build(query, docs[: args.layer_docs])
    prompts = [group.shared + t for t in group.tails]
    layers: dict[str, list[float]] = {}
    hidden: dict[str, list[Any]] = {}
    contexts = {"fp32": (fp32, contextlib.nullcontext), "autocast": (fp32, lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
                "mkldnn-bf16": (fp32, mkldnn_bf16_matmuls)}
    if bf16 is not None:
        contexts["bf16"] = (bf16, contextlib.nullcontext)
    with torch.inference_mode():
        for name, (backend, ctx) in contexts.items():
            states = []
            for ids in prompts:
                with ctx():
                    out = backend.body(input_ids=torch.tensor([ids]), output_hidden_states=True)
                states.append([h[0, -1].float() for h in out.hidden_states])
            hidden[name] = states
    for name in hidden:
        if name == "fp32":
            continue
        per_layer = []
        for layer in range(len(hidden["fp32"][0])):
            errs = [float((h[layer] - r[layer]).norm() / r[layer].norm()) for h, r in zip(hidden[name], hidden["fp32"], strict=True)]
            per_layer.append(statistics.fmean(errs))
        layers[name] = per_layer
    last32 = torch.stack([s[-1] for s in hidden["fp32"]])
    w = fp32.w_diff
    scale = {
        "raw_score_std_fp32": statistics.pstdev(raw32),
        "raw_score_range_fp32": [min(raw32), max(raw32)],
        "w_diff_norm": float(w.norm()),
        "final_hidden_norm_mean": float(last32.norm(dim=1).mean()),
        "norm_product_over_sqrt_d": float(w.norm() * last32.norm(dim=1).mean() / math.sqrt(w.numel())),
        "note": "a score is h·(w_yes−w_no); with random weights the yes/no rows are scaled ×40, so |w_diff| is"
                " large and a 2^-8 relative rounding of h moves the raw score by ~|h||w|·2^-8/√d",
    }

    lines = ["| variant | s (64 docs) | max abs Δscore vs fp32 | max abs Δraw | median abs Δraw | Spearman | top-10 same order | full ranking same |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['seconds']:.1f} | {r['max_abs_delta_score']:.2e} | {r['max_abs_delta_raw']:.3f} | "
                     f"{r['median_abs_delta_raw']:.3f} | {r['spearman']:.4f} | {'yes' if r['top10_identical_order'] else 'no'} | "
                     f"{'yes' if r['ranking_identical'] else 'no'} |")
    table = "\n".join(lines)
    print(table)
    print(json.dumps(scale, indent=1))
    for name, errs in layers.items():
        print(name, " ".join(f"{e:.1e}" for e in errs))
    result = {
        "command": "python bench/precision.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "setup": {"model": args.model, "docs": len(docs), "doc_tokens": args.doc_tokens, "threads": torch.get_num_threads(),
                  "fp32_reference": "rerankd fp32 path (prefix reuse)",
                  "rerankd_fp32_vs_card_fp32_max_abs": reference_check, "check_docs": args.check_docs,
                  "seconds_fp32": seconds["fp32"]},
        "rows": rows,
        "per_layer_relative_error_last_token": layers,
        "scale": scale,
        "table_markdown": table,
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
