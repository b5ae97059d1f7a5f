"""The Python steps of bench/gpu_ready.sh: card reference scores, score parity per server, and the GPU table.

Why one file of three small steps: the shell script owns processes and time limits; these steps own the
numbers. ``card`` scores one fixed request with the model card recipe in fp32 on the device, once, before
any server holds GPU memory; ``parity`` sends the same request to a server and compares its scores with the
card's; ``table`` joins the ``rerankd bench`` reports and the parity files into one markdown table.

MFU = achieved model FLOP/s ÷ the device's bf16 dense peak. Model FLOPs of one pair of prompt length s are
2 × (non-embedding parameters) × s (the linear layers) + 2 × layers × (heads × head_dim) × s² (causal QKᵀ and
PV); the prompt is the card's (template + query + document), whatever a server saves by reusing a shared
prefix, so prefix reuse shows as a higher MFU: that is the point of it. The peak comes from a table of
datasheet figures by ``torch.cuda.get_device_name`` (``PEAK_TFLOPS`` overrides it; on a CPU there is none).

Usage::

    python bench/gpu_ready.py card --model DIR --device cuda --docs 64 --doc-tokens 240-272 --out card.json
    python bench/gpu_ready.py parity --card card.json --url http://127.0.0.1:8000 --name torch --out DIR
    python bench/gpu_ready.py table --dir DIR --model DIR
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchlib.agreement import compare_scores

# bf16 dense tensor-core peaks, TFLOP/s, from the vendors' datasheets (no sparsity). Matched by substring of
# torch.cuda.get_device_name, first match wins, so the more specific names come first.
PEAK_BF16_TFLOPS: list[tuple[str, float]] = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200", 989.4), ("H100", 989.4), ("H800", 989.4),
    ("GH200", 989.4), ("B200", 2250.0), ("B100", 1750.0), ("A100", 312.0), ("A800", 312.0),
    ("L40S", 362.1), ("L40", 181.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0),
]


def peak_tflops(device_name: str) -> float | None:
    """The bf16 dense peak of ``device_name``: ``PEAK_TFLOPS`` if set, else the datasheet table, else None."""
    if os.environ.get("PEAK_TFLOPS"):
        return float(os.environ["PEAK_TFLOPS"])
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return value
    return None


def pair_flops(config: dict[str, Any], prompt_tokens: int) -> float:
    """Model FLOPs of one forward over a prompt of ``prompt_tokens`` (the module docstring's formula)."""
    h, layers = config["hidden_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or h // config["num_attention_heads"]
    q = config["num_attention_heads"] * head_dim
    kv = config["num_key_value_heads"] * head_dim
    per_layer = h * q * 2 + h * kv * 2 + 3 * h * config["intermediate_size"]  # q,o + k,v + gate,up,down
    return 2.0 * layers * per_layer * prompt_tokens + 2.0 * layers * q * prompt_tokens**2


def prompt_lengths(tokenizer: Any, query: str, docs: list[str]) -> list[int]:
    """Each pair's prompt length in tokens as the card builds it (template + query + document)."""
    from rerankd.engine.prompt import DEFAULT_INSTRUCTION, PREFIX, SUFFIX, format_pair

    fixed = len(tokenizer.encode(PREFIX, add_special_tokens=False)) + len(tokenizer.encode(SUFFIX,
                                                                                             add_special_tokens=False))
    pairs = [format_pair(query, d, DEFAULT_INSTRUCTION) for d in docs]
    return [fixed + len(ids) for ids in tokenizer(pairs, add_special_tokens=False)["input_ids"]]


def cmd_card(args: argparse.Namespace) -> None:
    import torch

    from rerankd.benchmark.reference import CardRecipe
    from rerankd.benchmark.workload import make_workload

    t0 = time.perf_counter()
    card = CardRecipe(args.model, dtype="float32")
    assert card.model is not None
    card.model.to(args.device)
    request = make_workload(card.tokenizer, args.docs, args.doc_tokens, seed=1, variants=1).requests[0]
    pairs_device = args.device
    scores: list[float] = []
    with torch.no_grad():
        from rerankd.engine.prompt import DEFAULT_INSTRUCTION, format_pair

        pairs = [format_pair(request.query, d, DEFAULT_INSTRUCTION) for d in request.documents]
        for i in range(0, len(pairs), args.batch):
            inputs = card.process_inputs(pairs[i: i + args.batch]).to(pairs_device)
            scores.extend(card.compute_logits(inputs))
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    out = {"model": args.model, "device": args.device, "device_name": name, "dtype": "float32",
           "query": request.query, "documents": request.documents, "scores": scores,
           "seconds": time.perf_counter() - t0}
    Path(args.out).write_text(json.dumps(out) + "\n")
    print(f"card: {len(scores)} scores on {name} (fp32) in {out['seconds']:.1f}s -> {args.out}", file=sys.stderr)


def cmd_parity(args: argparse.Namespace) -> None:
    import httpx

    card = json.loads(Path(args.card).read_text())
    body = {"query": card["query"], "documents": card["documents"], "return_documents": False}
    reply = httpx.post(f"{args.url.rstrip('/')}/v1/rerank", json=body, timeout=300)
    reply.raise_for_status()
    by_index = {r["index"]: r["relevance_score"] for r in reply.json()["results"]}
    served = [by_index[i] for i in range(len(card["documents"]))]
    result = {"name": args.name, **compare_scores(card["scores"], served)}
    out = Path(args.out) / f"parity_{args.name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"parity {args.name}: max|Δ| {result['max_abs_delta_score']:.2e}, "
          f"ranking identical {result['ranking_identical']} -> {out}", file=sys.stderr)


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def cmd_table(args: argparse.Namespace) -> None:
    from rerankd.benchmark.workload import load_tokenizer, make_workload

    folder = Path(args.dir)
    config = json.loads((Path(args.model) / "config.json").read_text())
    card_file = folder / "card.json"
    device_name = json.loads(card_file.read_text())["device_name"] if card_file.exists() else "unknown"
    peak = peak_tflops(device_name)
    tokenizer = load_tokenizer(args.model)
    flops_cache: dict[tuple[int, str], float] = {}

    def mean_pair_flops(n_docs: int, doc_tokens: str) -> float:
        """Mean model FLOPs per pair over the bench's own workload (same seed and variants as its defaults)."""
        key = (n_docs, doc_tokens)
        if key not in flops_cache:
            workload = make_workload(tokenizer, n_docs, doc_tokens, seed=0, variants=4)
            flops = [pair_flops(config, n) for r in workload.requests
                     for n in prompt_lengths(tokenizer, r.query, r.documents)]
            flops_cache[key] = statistics.fmean(flops)
        return flops_cache[key]

    lines = [f"device: {device_name}; bf16 dense peak: {_fmt(peak, '.1f')} TFLOP/s"
             f"{' (PEAK_TFLOPS)' if os.environ.get('PEAK_TFLOPS') else ''}; model: {args.model}", "",
             "| backend | load | requests (errors) | pairs/s | p50 s | p99 s | model TFLOP/s | MFU | parity max abs Δ vs card fp32 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in args.backends.split(","):
        skipped = folder / f"skipped_{name}.txt"
        if skipped.exists():
            lines.append(f"| {name} | {skipped.read_text().strip()} | | | | | | | |")
            continue
        bench_file = folder / f"bench_{name}.json"
        if not bench_file.exists():
            lines.append(f"| {name} | failed: no {bench_file.name} (see the step's log) | | | | | | | |")
            continue
        report = json.loads(bench_file.read_text())
        parity_file = folder / f"parity_{name}.json"
        parity = json.loads(parity_file.read_text())["max_abs_delta_score"] if parity_file.exists() else None
        for row in report["rows"]:
            tflops = row["pairs_per_s"] * mean_pair_flops(row["n_docs"], report["doc_tokens"]) / 1e12
            mfu = tflops / peak if peak else None
            lines.append(
                f"| {name} | {row['workload']} c={row['concurrency']} | {row['requests']} ({row['errors']}) "
                f"| {row['pairs_per_s']:.1f} | {_fmt(row['latency_p50_s'], '.3f')} | {_fmt(row['latency_p99_s'], '.3f')} "
                f"| {tflops:.3g} | {_fmt(None if mfu is None else 100 * mfu, '.3g')}{'%' if mfu is not None else ''} "
                f"| {_fmt(parity, '.2e')} |")
    table = "\n".join(lines) + "\n"
    (folder / "gpu_table.md").write_text(table)
    print(table)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="step", required=True)
    c = sub.add_parser("card", help="card recipe scores (fp32, on --device) of one fixed request")
    c.add_argument("--model", required=True)
    c.add_argument("--device", default="cuda")
    c.add_argument("--docs", type=int, default=64)
    c.add_argument("--doc-tokens", default="240-272")
    c.add_argument("--batch", type=int, default=16)
    c.add_argument("--out", required=True)
    q = sub.add_parser("parity", help="a server's scores of the card's request against the card's")
    q.add_argument("--card", required=True)
    q.add_argument("--url", required=True)
    q.add_argument("--name", required=True)
    q.add_argument("--out", required=True, help="folder for parity_NAME.json")
    t = sub.add_parser("table", help="one markdown table of the bench reports and parity files in --dir")
    t.add_argument("--dir", required=True)
    t.add_argument("--model", required=True)
    t.add_argument("--backends", default="torch,vllm,plain_vllm")
    args = p.parse_args(argv)
    {"card": cmd_card, "parity": cmd_parity, "table": cmd_table}[args.step](args)


if __name__ == "__main__":
    main()
