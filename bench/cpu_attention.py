"""CPU attention for one decoder layer of a scoring micro-batch: what rerankd runs and the alternatives.

Why: in a profile of the goal's request (1 query x 64 documents of ~256 tokens, 0.6B, bf16, AMX Xeon,
tcmalloc) attention is 23 % of the time while doing ~8 % of the FLOPs: PyTorch's CPU flash kernel runs
these shapes at ~150-250 GFLOP/s against 2.2-2.9 TFLOP/s for the linear layers. This measures, for the
shape of that request's largest micro-batch (47 rows x 272 columns after a 71-token shared prefix, 16
query heads over 8 key/value heads, head dim 128):

* ``sdpa_dense_mask`` — one SDPA call with the dense (rows, 1, T, P+T) mask: what the fused forward does for
  chunks under ``SPLIT_ATTENTION_MIN_COLUMNS`` columns.
* ``split_flash`` — cached keys with a padding bias and own keys ``is_causal``, two flash calls merged by
  log-sum-exp: what it does for longer chunks.
* ``sdpa_causal_no_prefix`` — own keys only, ``is_causal``: a floor (it skips the prefix entirely).
* ``gemm_softmax`` — attention as two bf16 batched GEMMs (oneDNN/AMX, the GQA head pairs stacked so no key
  copy) with a compiled fp32 masked softmax between them, with each part timed alone.

Useful FLOPs are 4 x rows x heads x T x (P + T) x head_dim for every variant (the causal floor: its own).

    python bench/cpu_attention.py --malloc tcmalloc --out bench/results/cpu_attention_amx.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchlib.cpu import add_malloc_option
from benchlib.results import write_result
from rerankd.allocator import use_allocator
from rerankd.benchmark.report import cpu_name
from rerankd.engine.backends.qwen3_forward import FusedQwen3Forward, _compiled_kernels

HERE = Path(__file__).resolve().parent


def _ms(call: Callable[[], torch.Tensor], repeats: int) -> tuple[float, torch.Tensor]:
    """Median milliseconds of ``call`` over ``repeats`` (after two warm-up calls) and its last output."""
    out = call()
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        out = call()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times), out


def masked_softmax(scores: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim of bf16 scores plus an fp32 additive mask, in fp32, back to bf16."""
    return torch.softmax(scores.float() + bias, -1).to(scores.dtype)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=47)
    p.add_argument("--columns", type=int, default=272, help="tokens per row in the micro-batch (T)")
    p.add_argument("--prefix", type=int, default=71, help="cached shared-prefix tokens (P)")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    add_malloc_option(p)
    p.add_argument("--out", default=str(HERE / "results" / "cpu_attention.json"))
    args = p.parse_args()
    allocator = use_allocator(args.malloc)
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    rows, heads, kv_heads, width, prefix, dim = (args.rows, args.heads, args.kv_heads, args.columns, args.prefix,
                                                args.head_dim)
    group, scale, bf16 = heads // kv_heads, dim ** -0.5, torch.bfloat16
    q = torch.randn(rows, heads, width, dim, dtype=bf16)
    k = torch.randn(rows, kv_heads, prefix + width, dim, dtype=bf16)
    v = torch.randn_like(k)
    visible = torch.ones(rows, prefix, dtype=torch.bool)
    dense = FusedQwen3Forward._dense_mask(visible, width)
    padding_bias = FusedQwen3Forward._padding_bias(visible, width, bf16)
    merge = _compiled_kernels().merge_attention
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

    def sdpa_dense() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=dense, scale=scale, enable_gqa=True)

    def split_flash() -> torch.Tensor:
        out_past, lse_past = flash(q, k[:, :, :prefix].repeat_interleave(group, 1),
                                   v[:, :, :prefix].repeat_interleave(group, 1), 0.0, False,
                                   attn_mask=padding_bias, scale=scale)[:2]
        out_own, lse_own = flash(q, k[:, :, prefix:].repeat_interleave(group, 1),
                                 v[:, :, prefix:].repeat_interleave(group, 1), 0.0, True, scale=scale)[:2]
        return merge(out_past, lse_past, out_own, lse_own)

    def causal_no_prefix() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k[:, :, prefix:], v[:, :, prefix:], is_causal=True, scale=scale,
                                              enable_gqa=True)

    # Query heads h = group*g .. group*g + group - 1 read key/value head g: stack them along the query axis.
    q_stacked = q.reshape(rows * kv_heads, group * width, dim)
    k_t = k.reshape(rows * kv_heads, prefix + width, dim).transpose(1, 2).contiguous()
    v_flat = v.reshape(rows * kv_heads, prefix + width, dim)
    softmax_bias = torch.zeros(dense.shape, dtype=torch.float32).masked_fill_(~dense, float("-inf"))[:, :, None]
    softmax = torch.compile(masked_softmax, dynamic=True)

    def qk() -> torch.Tensor:
        return torch.bmm(q_stacked, k_t)

    def soft(scores: torch.Tensor) -> torch.Tensor:
        return softmax(scores.view(rows, kv_heads, group, width, prefix + width), softmax_bias)

    def pv(probs: torch.Tensor) -> torch.Tensor:
        return torch.bmm(probs.view(rows * kv_heads, group * width, prefix + width), v_flat)

    def gemm_softmax() -> torch.Tensor:
        return pv(soft(qk() * scale)).view(rows, heads, width, dim)

    flops = 4 * rows * heads * width * (prefix + width) * dim
    causal_flops = 4 * rows * heads * width * width * dim
    reference = sdpa_dense()
    results = []
    for name, call, useful in [("sdpa_dense_mask", sdpa_dense, flops), ("split_flash", split_flash, flops),
                               ("sdpa_causal_no_prefix", causal_no_prefix, causal_flops),
                               ("gemm_softmax", gemm_softmax, flops)]:
        ms, out = _ms(call, args.repeats)
        row = {"variant": name, "ms": round(ms, 2), "gflops": round(useful / ms / 1e6, 1)}
        if name != "sdpa_causal_no_prefix":
            row["max_abs_diff_vs_dense"] = float((out.float() - reference.float()).abs().max())
        results.append(row)
        print(f"{name:22} {ms:7.1f} ms  {row['gflops']:7.1f} GFLOP/s", flush=True)
    scores = qk() * scale
    probs = soft(scores)
    parts = {"qk_bmm": _ms(qk, args.repeats)[0], "softmax": _ms(lambda: soft(scores), args.repeats)[0],
             "pv_bmm": _ms(lambda: pv(probs), args.repeats)[0]}
    print("gemm_softmax parts: " + ", ".join(f"{n} {ms:.1f} ms" for n, ms in parts.items()))
    result = {"command": "python bench/cpu_attention.py", "cpu": cpu_name(), "threads": torch.get_num_threads(),
              "malloc": allocator, "torch": torch.__version__,
              "shape": {"rows": rows, "columns": width, "prefix": prefix, "heads": heads, "kv_heads": kv_heads,
                        "head_dim": dim},
              "results": results, "gemm_softmax_parts_ms": {n: round(ms, 2) for n, ms in parts.items()}}
    write_result(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
