"""How close rerankd's CPU forward comes to the isolated GEMM rate, and where the rest of a request goes.

Why (issue 22, item 4): a request's linear layers ran at 2.2-3.1 TFLOP/s on the AMX Xeon where the same GEMMs
alone reach 2.6-3.6, and attention (23 %) plus element-wise passes (16 %) took much of the rest. This script
puts the three numbers that question needs side by side, for one request through rerankd's own engine path
(``PromptBuilder`` → the batcher's cut → ``TorchBackend.score``; :mod:`benchlib.engine_path`):

(a) the isolated GEMM rate: ``F.linear`` on each of the model's linear shapes (q, k, v, o, gate, up, down)
    at the token count of the request's largest micro-batch, same dtype and threads;
(b) the end-to-end rate: analytic FLOPs (every linear layer on the tokens it runs, the last layer's
    queries/MLP on the scored token only, plus causal attention over prefix + own keys) / wall time;
(c) a ``torch.profiler`` breakdown by category (GEMM, attention, element-wise = norms/RoPE/SiLU/residual
    adds and the compiled kernels fusing them, copies = cat/index/transpose copies/KV cache, other),
    self-time and share, for each ``--compile`` mode. The GEMM events carry their shapes, so the profile also
    gives the GEMM rate *inside* the forward: its ratio to (a) is the headline.

For the element-wise part it also measures copy bandwidth (``copy_`` of a 256 MiB tensor: read + write) and
compares it with the bytes those passes must move (analytic, per token per layer), i.e. how far they are
from memory-bound.

Modes (``--modes``): ``on`` = the fused forward with compiled element-wise kernels (``--compile on``), ``off``
= transformers' forward (``--compile off``), ``fused-eager`` = the fused forward with eager kernels.

    python bench/roofline.py --docs 64 --doc-tokens 240-272 --out bench/results/roofline_epyc.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from benchlib.engine_path import engine_scores, micro_batches
from benchlib.results import write_result

HERE = Path(__file__).resolve().parent
MAX_LEN = 8192

GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_mkldnn_linear", "mkldnn::_linear_pointwise"}
ATTENTION_MARKS = ("scaled_dot_product", "flash_attention", "_efficient_attention", "aten::_softmax",
                   "aten::softmax")
COPY_OPS = {"aten::cat", "aten::copy_", "aten::clone", "aten::contiguous", "aten::index", "aten::index_select",
            "aten::embedding", "aten::repeat_interleave", "aten::_unsafe_view", "aten::reshape", "aten::expand",
            "aten::masked_fill_", "aten::zeros", "aten::empty", "aten::fill_", "aten::zero_"}
ELEMENTWISE_OPS = {"aten::mul", "aten::add", "aten::pow", "aten::mean", "aten::rsqrt", "aten::silu", "aten::neg",
                   "aten::to", "aten::_to_copy", "aten::sub", "aten::div", "aten::exp", "aten::cos", "aten::sin",
                   "aten::matmul_rope", "aten::sigmoid", "aten::add_", "aten::mul_", "aten::var_mean",
                   "aten::rms_norm", "aten::_fused_rms_norm", "aten::maximum", "aten::logaddexp"}


def category(name: str) -> str:
    """The profile category of one op (by its self time; parents such as ``aten::linear`` add ~nothing)."""
    if name in GEMM_OPS:
        return "gemm"
    if any(m in name for m in ATTENTION_MARKS):
        return "attention"
    if "Compiled" in name or "cpp_fused" in name or "inductor" in name.lower() or name in ELEMENTWISE_OPS:
        return "elementwise"
    if name in COPY_OPS:
        return "copies"
    return "other"


def linear_shapes(config: Any) -> dict[str, tuple[int, int]]:
    """(in, out) of each linear layer in one decoder layer."""
    h, d = config.hidden_size, getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q, kv, inter = config.num_attention_heads * d, config.num_key_value_heads * d, config.intermediate_size
    return {"q": (h, q), "k": (h, kv), "v": (h, kv), "o": (q, h), "gate": (h, inter), "up": (h, inter),
            "down": (inter, h)}


def request_flops(config: Any, shared: int, batches: list[tuple[int, list[int]]], prefix_reuse: bool) -> dict[str, float]:
    """Useful FLOPs of one request: per batch (prefix length, tail lengths); padding is not counted.

    With prefix reuse the prefix runs once (all layers, as a cache) and every row attends to it; without,
    each row carries it. The last layer runs k/v for every token but q/o/MLP only for each row's last token.
    """
    shapes = linear_shapes(config)
    layers = config.num_hidden_layers
    d = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    heads = config.num_attention_heads
    per_token = sum(2 * i * o for i, o in shapes.values())
    kv_token = 2 * (2 * shapes["k"][0] * shapes["k"][1])
    linear = attention = 0.0
    for prefix, tails in batches:
        if prefix_reuse and prefix:
            linear += layers * prefix * per_token  # the prefix pass
            attention += layers * 4 * heads * d * prefix * (prefix + 1) / 2
        own_prefix = 0 if prefix_reuse else prefix
        for t in tails:
            n = own_prefix + t
            linear += (layers - 1) * n * per_token + n * kv_token + (per_token - kv_token)
            # Query j of the row sees the cached prefix plus own keys 0..j (causal).
            seen = n * prefix + n * (n + 1) / 2 if prefix_reuse else n * (n + 1) / 2
            attention += (layers - 1) * 4 * heads * d * seen + 4 * heads * d * (prefix + n)
    return {"linear": linear, "attention": attention, "total": linear + attention}


def elementwise_bytes_per_token_layer(config: Any, itemsize: int) -> int:
    """Bytes the element-wise passes of one layer must move per token if each pass reads/writes once."""
    shapes = linear_shapes(config)
    h, q, kv, inter = config.hidden_size, shapes["q"][1], shapes["k"][1], shapes["gate"][1]
    floats = (2 * 4 * h          # two add + RMSNorm: read x, residual; write residual, normed
              + 2 * (q + kv)     # q/k norm + RoPE: read and write q, k
              + 3 * inter        # SiLU(gate) * up: read two, write one
              + 2 * q)           # attention output back to (tokens, q) layout for o_proj
    return floats * itemsize


def median_time(fn: Any, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def isolated_gemms(config: Any, tokens: int, dtype: torch.dtype, repeats: int) -> dict[str, Any]:
    """F.linear on each linear shape at ``tokens`` rows: seconds and GFLOP/s, plus the FLOP-weighted rate."""
    rows: dict[str, Any] = {}
    total_flops = total_s = 0.0
    for name, (i, o) in linear_shapes(config).items():
        x = torch.randn(tokens, i, dtype=dtype)
        w = torch.randn(o, i, dtype=dtype) * i ** -0.5
        with torch.inference_mode():
            s = median_time(lambda x=x, w=w: F.linear(x, w), repeats)
        flops = 2.0 * tokens * i * o
        rows[name] = {"m": tokens, "k": i, "n": o, "s": s, "gflops": flops / s / 1e9}
        total_flops += flops
        total_s += s
    return {"shapes": rows, "weighted_gflops": total_flops / total_s / 1e9}


def copy_bandwidth(repeats: int) -> float:
    """GB/s of ``copy_`` between two 256 MiB fp32 tensors, counting read + write.

    Into a preallocated target: a ``clone`` would time glibc's mmap of fresh pages (page faults), not memory.
    """
    x = torch.empty(64 * 1024 * 1024, dtype=torch.float32).normal_()
    y = torch.empty_like(x).zero_()
    s = median_time(lambda: y.copy_(x), repeats)
    return 2 * x.numel() * 4 / s / 1e9


def profile_request(call: Any) -> dict[str, Any]:
    """One profiled request: self time per category and the GEMMs' own FLOP rate from their shapes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as prof:
        t0 = time.perf_counter()
        call()
        wall = time.perf_counter() - t0
    cats: dict[str, float] = defaultdict(float)
    top: dict[str, float] = defaultdict(float)
    gemm_flops = 0.0
    for ev in prof.key_averages():
        self_s = ev.self_cpu_time_total / 1e6
        cats[category(ev.key)] += self_s
        top[ev.key] += self_s
        if ev.key in GEMM_OPS:
            gemm_flops += ev.flops or 0
    total = sum(cats.values())
    return {
        "wall_s_profiled": wall,
        "self_s_total": total,
        "categories": {c: {"s": s, "share": s / total} for c, s in sorted(cats.items(), key=lambda kv: -kv[1])},
        "gemm_flops_profiled": gemm_flops,
        "gemm_gflops_in_forward": gemm_flops / cats["gemm"] / 1e9 if cats["gemm"] else None,
        "top_ops": [{"op": k, "s": v} for k, v in sorted(top.items(), key=lambda kv: -kv[1])[:15]],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="/work/models/0.6b")
    p.add_argument("--docs", type=int, default=64)
    p.add_argument("--doc-tokens", default="240-272")
    p.add_argument("--batch-tokens", type=int, default=8192, help="micro-batch token budget (as bench/cpu_throughput.py)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="auto: what rerankd picks on this CPU (bf16 only with AVX-512 BF16/AMX)")
    p.add_argument("--modes", default="on,off", help="comma-separated --compile modes: on, off, fused-eager")
    p.add_argument("--repeats", type=int, default=2, help="timed requests per mode (median)")
    p.add_argument("--gemm-repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "results" / "roofline.json"))
    args = p.parse_args(argv)

    from transformers import AutoConfig, AutoTokenizer

    from rerankd.benchmark.reference import NO_ID, YES_ID
    from rerankd.benchmark.report import cpu_name
    from rerankd.benchmark.workload import make_workload
    from rerankd.engine.backends.decoders import FusedDecoder
    from rerankd.engine.backends.qwen3_forward import FusedQwen3Forward
    from rerankd.engine.backends.torch_backend import TorchBackend, cpu_has_fast_bf16
    from rerankd.engine.prompt import PromptBuilder

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if cpu_has_fast_bf16() else "float32")
    dtype = getattr(torch, dtype_name)
    config = AutoConfig.from_pretrained(args.model)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    request = make_workload(tokenizer, args.docs, args.doc_tokens, seed=args.seed, variants=1).requests[0]
    builder = PromptBuilder(tokenizer, MAX_LEN)
    group = builder.build(request.query, request.documents)
    batches = micro_batches(group.shared, group.tails, args.batch_tokens)
    largest = max(len(g.tails) * max(len(t) for t in g.tails) for _, g in batches)
    flops = request_flops(config, len(group.shared), [(len(g.shared), [len(t) for t in g.tails]) for _, g in batches],
                          prefix_reuse=True)
    real_tokens = len(group.shared) + sum(len(t) for t in group.tails)
    print(f"{args.docs} docs, prefix {len(group.shared)}, {real_tokens} tokens, micro-batches "
          f"{[len(ix) for ix, _ in batches]}, largest {largest} tokens, {flops['total'] / 1e12:.2f} TFLOP "
          f"({flops['attention'] / flops['total']:.1%} attention), {dtype_name}, {args.threads} threads", flush=True)

    bandwidth = copy_bandwidth(5)
    print(f"copy bandwidth {bandwidth:.1f} GB/s", flush=True)
    gemms = isolated_gemms(config, largest, dtype, args.gemm_repeats)
    print("isolated GEMMs: " + ", ".join(f"{n} {r['gflops']:.0f}" for n, r in gemms["shapes"].items())
          + f" GFLOP/s; weighted {gemms['weighted_gflops']:.0f}", flush=True)

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    results: dict[str, Any] = {}
    scores: dict[str, list[float]] = {}
    backends: dict[str, Any] = {}
    ew_bytes = elementwise_bytes_per_token_layer(config, dtype.itemsize) * config.num_hidden_layers * real_tokens
    for mode in modes:
        compile_mode = "on" if mode in ("on", "fused-eager") else "off"
        if compile_mode not in backends:
            backends[compile_mode] = TorchBackend(args.model, yes_token_id=YES_ID, no_token_id=NO_ID,
                                                  max_model_len=MAX_LEN, device="cpu", dtype=dtype_name,
                                                  compile=compile_mode)
        backend = backends[compile_mode]
        decoder = backend.decoder
        if mode == "fused-eager":
            backend.decoder = FusedDecoder(FusedQwen3Forward(backend.body, compile_kernels=False))

        def call() -> list[float]:
            return engine_scores(backend, builder, request.query, request.documents,  # noqa: B023
                                 max_batch_tokens=args.batch_tokens)

        try:
            t0 = time.perf_counter()
            # Warm-up on one document: first-call allocations, any remaining compilation (dynamic shapes).
            engine_scores(backend, builder, request.query, request.documents[:1], max_batch_tokens=args.batch_tokens)
            print(f"[{mode}] warm-up {time.perf_counter() - t0:.1f}s", flush=True)
            times = []
            for r in range(args.repeats):
                t0 = time.perf_counter()
                scores[mode] = call()
                times.append(time.perf_counter() - t0)
                print(f"[{mode}] request {r + 1}/{args.repeats}: {times[-1]:.2f}s", flush=True)
            prof = profile_request(call)
        finally:
            backend.decoder = decoder
        wall = statistics.median(times)
        cats = prof["categories"]
        ew = cats.get("elementwise", {"s": 0.0})["s"]
        attn = cats.get("attention", {"s": 0.0})["s"]
        in_fwd = prof["gemm_gflops_in_forward"]
        results[mode] = {
            "times_s": times, "median_s": wall,
            "end_to_end_gflops": flops["total"] / wall / 1e9,
            "end_to_end_vs_isolated_gemm": flops["total"] / wall / 1e9 / gemms["weighted_gflops"],
            "gemm_in_forward_vs_isolated": in_fwd / gemms["weighted_gflops"] if in_fwd else None,
            "attention_gflops": flops["attention"] / attn / 1e9 if attn else None,
            "elementwise_gb_per_s": ew_bytes / ew / 1e9 if ew else None,
            "profile": prof,
        }
        row = results[mode]
        print(f"[{mode}] {wall:.2f}s/request, end-to-end {row['end_to_end_gflops']:.0f} GFLOP/s = "
              f"{row['end_to_end_vs_isolated_gemm']:.0%} of isolated GEMM; GEMM in forward "
              f"{in_fwd or 0:.0f} GFLOP/s; " + ", ".join(f"{c} {v['share']:.0%}" for c, v in cats.items()), flush=True)

    ref = modes[0]
    agreement = {m: max(abs(a - b) for a, b in zip(scores[ref], scores[m], strict=True)) for m in modes[1:]}
    out = {
        "command": "python bench/roofline.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "setup": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": args.threads, "dtype": dtype_name,
                  "torch": torch.__version__, "model": args.model, "docs": args.docs, "doc_tokens": args.doc_tokens,
                  "shared_prefix": len(group.shared), "real_tokens": real_tokens,
                  "micro_batch_rows": [len(ix) for ix, _ in batches], "largest_batch_tokens": largest,
                  "load_average_at_end": os.getloadavg()},
        "flops": flops, "copy_bandwidth_gb_per_s": bandwidth,
        "elementwise_bytes_analytic": ew_bytes, "isolated_gemm": gemms, "modes": results,
        "max_abs_score_delta_vs_" + ref: agreement,
    }
    path = Path(args.out)
    write_result(path, out)
    print(f"wrote {path}; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
