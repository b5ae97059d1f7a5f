"""Does rerankd's batching or prefix reuse add bf16 drift? Raw-score drift vs fp32, batch shape by batch shape.

``bench/precision.py`` compares *probabilities*; the card's come out of a bf16 ``log_softmax``/``exp``,
so they are themselves rounded to bf16 (and saturate at 0/1 for large |raw|), which blurs a comparison
of the two computations. This script compares the *raw* score ``logit_yes − logit_no`` everywhere:

* ``fp32`` — rerankd's fp32 path without prefix reuse (the reference), and ``fp32-prefix`` (must be ~0).
* ``bf16-prefix-B`` / ``bf16-noprefix-B`` — rerankd bf16 with and without shared-prefix reuse, token
  budget ``B`` per micro-batch (8192 = the server default, 2700 ≈ the card's 8-row batches, 400 = one row).
* ``fused-bf16-prefix-B`` / ``fused-fp32`` — the same through the fused forward with compiled
  element-wise kernels (``--compile on``, the CPU default); the ``bf16-*`` rows use transformers' forward.
* ``card-bf16`` — the model card's computation (full causal LM, left padding, 8 rows per batch), raw score
  taken from its bf16 logits before the softmax.

Usage::

    python bench/precision_batching.py --docs 24     # writes bench/results/precision_batching.json
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from benchlib.engine_path import micro_batches
from rerankd.benchmark.reference import NO_ID, YES_ID, CardRecipe
from rerankd.benchmark.report import write_result
from rerankd.benchmark.workload import one_request
from rerankd.engine.backends.torch_backend import TorchBackend
from rerankd.engine.prompt import PromptBuilder

HERE = Path(__file__).resolve().parent
MAX_LEN = 8192


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="/work/models/qwen3-reranker-0.6b-random")
    p.add_argument("--docs", type=int, default=24)
    p.add_argument("--doc-tokens", default="240-272")
    p.add_argument("--budgets", default="8192,2700,400")
    p.add_argument("--out", default=str(HERE / "results" / "precision_batching.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(os.cpu_count() or 1)
    tokenizer, request = one_request(args.model, args.docs, args.doc_tokens)
    group = PromptBuilder(tokenizer, MAX_LEN).build(request.query, request.documents)
    n = len(group.tails)

    def backend(dtype: str, compile: str = "off") -> TorchBackend:
        return TorchBackend(args.model, yes_token_id=YES_ID, no_token_id=NO_ID, max_model_len=MAX_LEN,
                            device="cpu", dtype=dtype, compile=compile)

    def rerankd_raw(scorer: TorchBackend, budget: int, prefix: bool) -> list[float]:
        scorer.prefix_reuse = prefix
        out = [0.0] * n
        for indices, part in micro_batches(group.shared, group.tails, budget):
            for i, raw in zip(indices, scorer.score([part])[0], strict=True):
                out[i] = raw
        return out

    raws: dict[str, list[float]] = {}
    seconds: dict[str, float] = {}

    def run(name: str, fn: object) -> None:
        started = time.perf_counter()
        raws[name] = fn()  # type: ignore[operator]
        seconds[name] = round(time.perf_counter() - started, 1)
        print(f"[{name}] {seconds[name]} s", flush=True)

    fp32 = backend("float32")
    run("fp32", lambda: rerankd_raw(fp32, 8192, prefix=False))
    run("fp32-prefix", lambda: rerankd_raw(fp32, 8192, prefix=True))
    fp32.close()
    bf16 = backend("bfloat16")
    budgets = [int(b) for b in args.budgets.split(",")]
    for budget in budgets:
        run(f"bf16-prefix-{budget}", lambda b=budget: rerankd_raw(bf16, b, prefix=True))
        run(f"bf16-noprefix-{budget}", lambda b=budget: rerankd_raw(bf16, b, prefix=False))
    bf16.close()
    fused = backend("bfloat16", compile="on")
    for budget in budgets:
        run(f"fused-bf16-prefix-{budget}", lambda b=budget: rerankd_raw(fused, b, prefix=True))
    fused.close()
    fused32 = backend("float32", compile="on")
    run("fused-fp32", lambda: rerankd_raw(fused32, 8192, prefix=True))
    fused32.close()

    card = CardRecipe(args.model, dtype="bfloat16", max_length=MAX_LEN)
    prompts = [group.shared + t for t in group.tails]
    pad = card.tokenizer.pad_token_id

    def card_raw() -> list[float]:
        out: list[float] = []
        with torch.inference_mode():
            for start in range(0, n, 8):
                rows = prompts[start : start + 8]
                width = max(map(len, rows))
                ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
                mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
                logits = card.model(input_ids=ids, attention_mask=mask).logits[:, -1, :]
                out += (logits[:, YES_ID].float() - logits[:, NO_ID].float()).tolist()
        return out

    run("card-bf16", card_raw)

    reference = raws["fp32"]
    rows = []
    for name, values in raws.items():
        deltas = [abs(a - b) for a, b in zip(reference, values, strict=True)]
        rows.append({"variant": name, "seconds": seconds[name], "median_abs_delta_raw": statistics.median(deltas),
                     "mean_abs_delta_raw": statistics.fmean(deltas), "max_abs_delta_raw": max(deltas)})
    lines = ["| variant | median abs Δraw | mean abs Δraw | max abs Δraw |", "|---|---:|---:|---:|"]
    lines += [f"| {r['variant']} | {r['median_abs_delta_raw']:.4f} | {r['mean_abs_delta_raw']:.4f} | "
              f"{r['max_abs_delta_raw']:.4f} |" for r in rows]
    table = "\n".join(lines)
    print(f"raw score std (fp32): {statistics.pstdev(reference):.3f}")
    print(table)
    result = {
        "command": "python bench/precision_batching.py " + " ".join(
            shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "setup": {"model": args.model, "docs": n, "doc_tokens": args.doc_tokens, "threads": torch.get_num_threads(),
                  "raw_score_std_fp32": statistics.pstdev(reference)},
        "rows": rows, "table_markdown": table,
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
