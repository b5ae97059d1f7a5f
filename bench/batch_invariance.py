"""What batch-invariant scoring costs: one request through the server's micro-batches, with ``--batch-invariant``
off (rows batched, padded to the widest) and on (each document a pass of its own after the prefix).

The two modes alternate run by run in one process, so the machine's load falls on both alike; the load
average is printed. Usage::

    python bench/batch_invariance.py --model /work/models/qwen3-reranker-0.6b-random --docs 16 --doc-tokens 240-272
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from benchlib.engine_path import engine_scores
from rerankd.benchmark.reference import NO_ID, YES_ID
from rerankd.benchmark.workload import one_request
from rerankd.engine.backends.torch_backend import TorchBackend
from rerankd.engine.prompt import PromptBuilder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--docs", type=int, default=16)
    p.add_argument("--doc-tokens", default="240-272")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--compile", default="on", help="on (the CPU path once compiled) or off")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    tokenizer, request = one_request(args.model, args.docs, args.doc_tokens)
    builder = PromptBuilder(tokenizer, 8192)
    backends = {mode: TorchBackend(args.model, yes_token_id=YES_ID, no_token_id=NO_ID, max_model_len=8192,
                                   device="cpu", dtype=args.dtype, compile=args.compile, batch_invariant=mode)
                for mode in ("off", "on")}
    seconds: dict[str, list[float]] = {mode: [] for mode in backends}
    for b in backends.values():  # untimed: first passes prepare threads and oneDNN primitives
        engine_scores(b, builder, request.query, request.documents)
    for _ in range(args.repeats):
        for mode, b in backends.items():
            started = time.perf_counter()
            engine_scores(b, builder, request.query, request.documents)
            seconds[mode].append(time.perf_counter() - started)
    print(f"{args.docs} docs x {args.doc_tokens} tokens, {args.dtype}, --compile {args.compile}; "
          f"load average {os.getloadavg()[0]:.1f}")
    for mode, s in seconds.items():
        print(f"--batch-invariant {mode:3s}: median {statistics.median(s):.3f} s over {len(s)} "
              f"({args.docs / statistics.median(s):.1f} pairs/s)")
    print(f"on / off: {statistics.median(seconds['on']) / statistics.median(seconds['off']):.2f}x the time")


if __name__ == "__main__":
    main()
