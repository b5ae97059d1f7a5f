"""Which dtype this CPU multiplies fastest: GFLOPS of the 0.6B model's linear layers in fp32 and bf16.

Why it matters: on CPUs with AVX-512 BF16 or AMX, oneDNN runs bf16 natively (the project's AMD EPYC:
bf16 3.3x faster than fp32 end to end); without them bf16 is emulated and *slower* than fp32, so the model
card's bf16 recipe pays twice and ``--dtype auto`` picks float32. The shapes are the Qwen3-Reranker-0.6B
projections (hidden 1024, q 2048, kv 1024, MLP 3072) at a 4096-token batch.

    python bench/cpu_matmul_dtypes.py        # writes bench/results/cpu_matmul_dtypes.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from rerankd.benchmark.report import cpu_name
from rerankd.engine.backends.torch_backend import cpu_has_fast_bf16

HERE = Path(__file__).resolve().parent
SHAPES = {"q_proj": (1024, 2048), "k/v_proj": (1024, 1024), "o_proj": (2048, 1024), "gate/up_proj": (1024, 3072),
          "down_proj": (3072, 1024)}


def _gflops(tokens: int, n_in: int, n_out: int, dtype: torch.dtype, repeats: int) -> float:
    x = torch.randn(tokens, n_in, dtype=dtype)
    w = torch.randn(n_out, n_in, dtype=dtype)
    torch.nn.functional.linear(x, w)  # first call: kernel selection and JIT
    started = time.perf_counter()
    for _ in range(repeats):
        torch.nn.functional.linear(x, w)
    seconds = (time.perf_counter() - started) / repeats
    return 2 * tokens * n_in * n_out / seconds / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(HERE / "results" / "cpu_matmul_dtypes.json"))
    args = p.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    cpu = cpu_name()
    rows = []
    for name, (n_in, n_out) in SHAPES.items():
        fp32 = _gflops(args.tokens, n_in, n_out, torch.float32, args.repeats)
        bf16 = _gflops(args.tokens, n_in, n_out, torch.bfloat16, args.repeats)
        rows.append({"layer": name, "shape": [args.tokens, n_in, n_out], "fp32_gflops": round(fp32, 1),
                     "bf16_gflops": round(bf16, 1), "bf16_over_fp32": round(bf16 / fp32, 2)})
        print(f"{name:13} fp32 {fp32:7.1f} GFLOPS   bf16 {bf16:7.1f} GFLOPS   bf16/fp32 {bf16 / fp32:.2f}")
    result = {"command": "python bench/cpu_matmul_dtypes.py", "cpu": cpu, "threads": torch.get_num_threads(),
              "native_bf16": cpu_has_fast_bf16(), "torch": torch.__version__, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{cpu}, native bf16: {cpu_has_fast_bf16()}; wrote {args.out}")


if __name__ == "__main__":
    main()
