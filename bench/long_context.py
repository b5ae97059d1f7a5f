"""Long documents: time and peak memory to score one prompt of L tokens, rerankd's chunked path vs the card.

Each (path, length) runs in a fresh subprocess so its peak RSS (``ru_maxrss``) is its own; the row also
reports the peak *above* the loaded model (activations, attention, KV cache, logits). rerankd runs its
default bf16 TorchBackend (forward in chunks of ``--chunk-tokens`` columns over a growing KV cache). The
card recipe computes all 151,669 logits at every position, so its memory grows by ~0.3 MB per token in
bf16 and it is only run up to ``--card-max`` tokens (say so in the report).

Usage::

    python bench/long_context.py --lengths 1024,4096,8192,16384,32768 --card-max 8192
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

from benchlib.results import write_result

HERE = Path(__file__).resolve().parent


def _rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _touch_weights(module: object) -> float:
    """Read every weight once (safetensors maps them lazily), then return RSS: the loaded-model baseline."""
    import torch

    with torch.no_grad():
        for param in module.parameters():  # type: ignore[attr-defined]
            param.sum()
    return _rss_mib()


def child(path: str, model: str, length: int, chunk_tokens: int, threads: int) -> dict:
    """Score one L-token prompt; return seconds, RSS after load and peak RSS (MiB)."""
    import torch
    from transformers import AutoTokenizer

    from rerankd.benchmark.reference import NO_ID, YES_ID, CardRecipe
    from rerankd.benchmark.workload import make_workload
    from rerankd.engine.prompt import PromptBuilder

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(model)
    request = make_workload(tokenizer, 1, f"{length}-{length}", seed=5, variants=1).requests[0]
    builder = PromptBuilder(tokenizer, length)  # the prompt is cut to exactly `length` tokens
    group = builder.build(request.query, request.documents)
    prompt_tokens = len(group.shared) + len(group.tails[0])
    if path == "rerankd":
        from rerankd.engine.backends.base import TokenGroup
        from rerankd.engine.backends.torch_backend import TorchBackend

        backend = TorchBackend(model, yes_token_id=YES_ID, no_token_id=NO_ID, max_model_len=length, device="cpu",
                               dtype="bfloat16", chunk_tokens=chunk_tokens)
        loaded = _touch_weights(backend.body)
        t0 = time.perf_counter()
        raw = backend.score([TokenGroup(group.shared, group.tails)])[0][0]
        score = 1 / (1 + math.exp(-raw))
    else:
        card = CardRecipe(model, dtype="bfloat16", max_length=length)
        assert card.prompt_ids(request.query, request.documents)[0] == group.shared + group.tails[0]
        loaded = _touch_weights(card.model)
        t0 = time.perf_counter()
        score = card.score(request.query, request.documents, batch=1)[0]
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"path": path, "length": length, "prompt_tokens": prompt_tokens, "seconds": seconds,
            "tokens_per_s": prompt_tokens / seconds, "rss_after_load_mib": loaded, "peak_rss_mib": peak,
            "peak_above_model_mib": peak - loaded, "weights_touched": True, "score": score}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="/work/models/qwen3-reranker-0.6b-random")
    p.add_argument("--lengths", default="1024,4096,8192,16384,32768")
    p.add_argument("--card-max", type=int, default=8192)
    p.add_argument("--chunk-tokens", type=int, default=2048)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--append", action="store_true", help="keep the rows already in --out")
    p.add_argument("--out", default=str(HERE / "results" / "long_context.json"))
    p.add_argument("--child", nargs=2, metavar=("PATH", "LENGTH"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child[0], args.model, int(args.child[1]), args.chunk_tokens, args.threads)))
        return

    out = Path(args.out)
    rows: list[dict] = json.loads(out.read_text())["rows"] if args.append and out.exists() else []
    command = "python bench/long_context.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    for length in [int(x) for x in args.lengths.split(",")]:
        for path in ("card", "rerankd"):
            if path == "card" and length > args.card_max:
                rows.append({"path": path, "length": length, "skipped": f"card recipe capped at {args.card_max} tokens"})
                continue
            cmd = [sys.executable, __file__, "--model", args.model, "--chunk-tokens", str(args.chunk_tokens),
                   "--threads", str(args.threads), "--child", path, str(length)]
            print(f"[{path} {length}] ...", flush=True)
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            except subprocess.TimeoutExpired:
                rows.append({"path": path, "length": length, "error": f"timeout after {args.timeout}s"})
                continue
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                rows.append({"path": path, "length": length, "error": f"exit {proc.returncode}: {proc.stderr[-600:]}"})
            else:
                rows.append(json.loads(line[7:]))
            print(json.dumps(rows[-1]), flush=True)
            # Write after every row: a 32k run takes many minutes and should not lose what came before.
            write_result(out, {"command": command, "chunk_tokens": args.chunk_tokens, "threads": args.threads,
                               "dtype": "bfloat16", "rows": rows})
    lines = ["| prompt tokens | path | seconds | tokens/s | peak RSS MiB | peak above loaded model MiB |", "|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        if "seconds" in r:
            lines.append(f"| {r['prompt_tokens']} | {r['path']} | {r['seconds']:.1f} | {r['tokens_per_s']:.0f} | {r['peak_rss_mib']:.0f} | {r['peak_above_model_mib']:.0f} |")
        else:
            lines.append(f"| {r['length']} | {r['path']} | — | — | — | {r.get('skipped') or r.get('error')} |")
    table = "\n".join(lines)
    print(table)
    write_result(out, {"command": command, "chunk_tokens": args.chunk_tokens, "threads": args.threads,
                       "dtype": "bfloat16", "rows": rows, "table_markdown": table})


if __name__ == "__main__":
    main()
