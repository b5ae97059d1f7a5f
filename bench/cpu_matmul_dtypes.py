"""Which dtype this CPU multiplies fastest: GFLOPS of the 0.6B model's linear layers in fp32, bf16 and int8.

Why it matters: on CPUs with AVX-512 BF16 or AMX, oneDNN runs bf16 natively (the project's AMD EPYC:
bf16 3.3x faster than fp32 end to end); without them bf16 is emulated and *slower* than fp32, so the model
card's bf16 recipe pays twice and ``--dtype auto`` picks float32. The shapes are the Qwen3-Reranker-0.6B
projections (hidden 1024, q 2048, kv 1024, MLP 3072) at a 4096-token batch.

``--int8`` adds the two int8 paths an int8 engine could take, to answer whether one would win at all
before anyone pays its score drift: ``torch._int_mm`` (int8 x int8 -> int32 GEMM, the kernel alone, no
quantisation of activations: an upper bound) and ``torch.ao`` dynamic quantisation of an ``nn.Linear``
(fbgemm; per-call activation quantisation included: what ``quantize_dynamic`` would give a model).
Figures are GOPS (two operations per multiply-add), comparable to the GFLOPS columns.

    python bench/cpu_matmul_dtypes.py        # writes bench/results/cpu_matmul_dtypes.json
    python bench/cpu_matmul_dtypes.py --int8 --malloc tcmalloc --out bench/results/cpu_matmul_int8_amx.json
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from benchlib.cpu import add_malloc_option
from benchlib.results import write_result
from rerankd.allocator import use_allocator
from rerankd.benchmark.report import cpu_name
from rerankd.engine.backends.torch_backend import cpu_has_fast_bf16

HERE = Path(__file__).resolve().parent
SHAPES = {"q_proj": (1024, 2048), "k/v_proj": (1024, 1024), "o_proj": (2048, 1024), "gate/up_proj": (1024, 3072),
          "down_proj": (3072, 1024)}


def _rate(tokens: int, n_in: int, n_out: int, call: Callable[[], object], repeats: int) -> float:
    """Giga-operations per second of ``call``, a (tokens x n_in) @ (n_in x n_out) product."""
    call()  # first call: kernel selection, JIT, weight reorders
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    seconds = (time.perf_counter() - started) / repeats
    return 2 * tokens * n_in * n_out / seconds / 1e9


def _linear(tokens: int, n_in: int, n_out: int, dtype: torch.dtype) -> Callable[[], object]:
    x = torch.randn(tokens, n_in, dtype=dtype)
    w = torch.randn(n_out, n_in, dtype=dtype)
    return lambda: torch.nn.functional.linear(x, w)


def _int_mm(tokens: int, n_in: int, n_out: int) -> Callable[[], object]:
    a = torch.randint(-127, 128, (tokens, n_in), dtype=torch.int8)
    b = torch.randint(-127, 128, (n_in, n_out), dtype=torch.int8)
    return lambda: torch._int_mm(a, b)


def _dynamic_qint8(tokens: int, n_in: int, n_out: int) -> Callable[[], object]:
    with warnings.catch_warnings():  # torch.ao's eager quantisation warns that it is moving to torchao
        warnings.simplefilter("ignore")
        layer = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(torch.nn.Linear(n_in, n_out, bias=False)),
                                                       {torch.nn.Linear}, dtype=torch.qint8)
    x = torch.randn(tokens, n_in)
    return lambda: layer(x)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--int8", action="store_true", help="also measure torch._int_mm and torch.ao dynamic int8")
    add_malloc_option(p)
    p.add_argument("--out", default=str(HERE / "results" / "cpu_matmul_dtypes.json"))
    args = p.parse_args()
    allocator = use_allocator(args.malloc)
    torch.set_num_threads(os.cpu_count() or 1)
    cpu = cpu_name()
    rows = []
    for name, (n_in, n_out) in SHAPES.items():
        fp32 = _rate(args.tokens, n_in, n_out, _linear(args.tokens, n_in, n_out, torch.float32), args.repeats)
        bf16 = _rate(args.tokens, n_in, n_out, _linear(args.tokens, n_in, n_out, torch.bfloat16), args.repeats)
        row = {"layer": name, "shape": [args.tokens, n_in, n_out], "fp32_gflops": round(fp32, 1),
               "bf16_gflops": round(bf16, 1), "bf16_over_fp32": round(bf16 / fp32, 2)}
        line = f"{name:13} fp32 {fp32:7.1f} GFLOPS   bf16 {bf16:7.1f} GFLOPS   bf16/fp32 {bf16 / fp32:.2f}"
        if args.int8:
            int_mm = _rate(args.tokens, n_in, n_out, _int_mm(args.tokens, n_in, n_out), args.repeats)
            dynamic = _rate(args.tokens, n_in, n_out, _dynamic_qint8(args.tokens, n_in, n_out), args.repeats)
            row.update(int_mm_gops=round(int_mm, 1), dynamic_qint8_gops=round(dynamic, 1),
                       int_mm_over_bf16=round(int_mm / bf16, 2), dynamic_qint8_over_bf16=round(dynamic / bf16, 2))
            line += f"   int8 _int_mm {int_mm:7.1f}   dynamic qint8 {dynamic:7.1f} GOPS"
        rows.append(row)
        print(line, flush=True)
    command = "python bench/cpu_matmul_dtypes.py" + (" --int8" if args.int8 else "")
    result = {"command": command, "cpu": cpu, "threads": torch.get_num_threads(), "malloc": allocator,
              "native_bf16": cpu_has_fast_bf16(), "torch": torch.__version__, "rows": rows}
    write_result(args.out, result)
    print(f"{cpu}, native bf16: {cpu_has_fast_bf16()}, malloc {allocator}; wrote {args.out}")


if __name__ == "__main__":
    main()
