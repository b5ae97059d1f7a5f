"""A Qwen3 decoder forward written for scoring, with the element-wise work fused by ``torch.compile``.

Why not transformers' forward: on a CPU whose matrix units are fast (AMX: the 0.6B model's bf16 linear
layers run at 2.5-3.1 TFLOP/s on 2 cores, 7x fp32, ``bench/results/cpu_matmul_dtypes_amx.json``), the
GEMMs stop being the cost. A profile of transformers' forward (8 x 330 tokens, bf16) spends 38 % in
``aten::mm``, 17 % in attention and ~45 % in element-wise passes over memory: RMSNorm's up-cast, square,
mean, scale and down-cast, RoPE's slices and concatenation, SiLU, residual adds, each its own pass. Here
each run of element-wise ops between two matrix products is one function, compiled once (dynamic shapes,
so no recompiles per batch) into a single vectorised loop:

* ``rms_norm`` (input norm of layer 0)
* ``qk_norm_rope``: q/k RMSNorm over the head dim + rotary embedding, one pass each
* ``add_rms_norm``: residual add + the next RMSNorm (post-attention, and next layer's input norm)
* ``silu_mul``: the MLP's SiLU(gate) x up
* ``merge_attention``: two partial attentions combined by their log-sum-exps (split attention, below)

Matrix products stay ``F.linear`` (oneDNN/AMX) and attention stays PyTorch's SDPA. With no cache and no
chunking the causal mask alone is exact (rows are right-padded: a real token never sees padding), so
SDPA runs ``is_causal`` and skips the upper triangle instead of applying a dense mask. After a cache (the
shared prefix, earlier chunks of a long document), short chunks take one call with a dense mask and, on
the CPU, long ones two calls — cached keys with a padding mask, own keys ``is_causal`` — merged by
log-sum-exp (:func:`choose_attention`: the kernel that returns the log-sum-exp is ATen's CPU flash kernel,
so on other devices every chunk after a cache takes the dense mask).

The cache is a plain list of per-layer (key, value) tensors, so the shared-prefix KV can be gathered
to rows with one ``index_select`` and extended chunk by chunk for long documents.

Un-compiled (``compile_kernels=False``) the same functions give transformers' numbers exactly
(tests compare them); compiled, inductor keeps intermediates in fp32 across a fused region instead of
rounding each op to bf16, so bf16 results move by rounding-sized amounts (nearer to fp32, not farther:
``bench/precision_batching.py``).
"""

from __future__ import annotations

import enum
import functools
import os
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["SPLIT_ATTENTION_MIN_COLUMNS", "AttentionKernel", "FusedQwen3Forward", "KVCache", "choose_attention",
           "compile_problem", "compile_supported", "split_attention_supported"]

# Per layer: (keys, values), each (rows, kv_heads, positions, head_dim).
KVCache = list[tuple[torch.Tensor, torch.Tensor]]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen3RMSNorm's arithmetic, op for op: statistics in fp32, scaled back in the input dtype."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, q_weight: torch.Tensor, k_weight: torch.Tensor,
                 cos: torch.Tensor, sin: torch.Tensor, head_dim: int, eps: float,
                 k_cos: torch.Tensor | None = None,
                 k_sin: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, T, heads*dim) projections → normed, rotated (rows, heads, T, dim) queries and keys.

    ``k_cos``/``k_sin``: the keys' rotary tables when the queries are other positions than the keys
    (the last layer's selected queries); by default both use ``cos``/``sin``.
    """
    q = rms_norm(q.view(q.shape[0], q.shape[1], -1, head_dim), q_weight, eps).transpose(1, 2)
    k = rms_norm(k.view(k.shape[0], k.shape[1], -1, head_dim), k_weight, eps).transpose(1, 2)
    k_cos = cos if k_cos is None else k_cos
    k_sin = sin if k_sin is None else k_sin
    return _rope(q, cos.unsqueeze(1), sin.unsqueeze(1)), _rope(k, k_cos.unsqueeze(1), k_sin.unsqueeze(1))


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add, then the next norm: returns (new residual stream, its normed copy)."""
    total = residual + x
    return total, rms_norm(total, weight, eps)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def merge_attention(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor,
                    lse_b: torch.Tensor) -> torch.Tensor:
    """Softmax attention over keys A ∪ B from the two partial results and their log-sum-exps (fp32)."""
    top = torch.maximum(lse_a, lse_b)
    w_a = torch.exp(lse_a - top).unsqueeze(-1)
    w_b = torch.exp(lse_b - top).unsqueeze(-1)
    return ((out_a.float() * w_a + out_b.float() * w_b) / (w_a + w_b)).to(out_a.dtype)


@dataclass(frozen=True)
class _Kernels:
    rms_norm: Callable[..., torch.Tensor]
    qk_norm_rope: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    add_rms_norm: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    silu_mul: Callable[..., torch.Tensor]
    merge_attention: Callable[..., torch.Tensor]


_EAGER = _Kernels(rms_norm, qk_norm_rope, add_rms_norm, silu_mul, merge_attention)

# From this many query columns on, attention after a cache runs as two parts merged by log-sum-exp (below).
SPLIT_ATTENTION_MIN_COLUMNS = 1024


class AttentionKernel(enum.Enum):
    """How one chunk's attention is computed (see the module docstring)."""

    CAUSAL = "causal"  # no cache: SDPA ``is_causal`` over the chunk's own keys
    DENSE_MASK = "dense_mask"  # after a cache: one SDPA call with a dense boolean mask
    SPLIT = "split"  # after a cache: cached and own keys apart, merged by log-sum-exp (CPU flash kernel)


def split_attention_supported(device: torch.device) -> bool:
    """Whether split attention can run on ``device``: it needs the log-sum-exp that only ATen's CPU flash
    kernel (``_scaled_dot_product_flash_attention_for_cpu``) returns through a public-enough op."""
    return device.type == "cpu"


def choose_attention(device: torch.device, columns: int, cached: bool, split_min_columns: int) -> AttentionKernel:
    """The attention for a chunk of ``columns`` query columns on ``device``, after a cache or not."""
    if not cached:
        return AttentionKernel.CAUSAL
    if columns >= split_min_columns and split_attention_supported(device):
        return AttentionKernel.SPLIT
    return AttentionKernel.DENSE_MASK


@functools.cache
def _compiled_kernels() -> _Kernels:
    """One set per process: every loaded model shares the compiled code (it depends on dtype, not weights)."""
    return _Kernels(**{name: torch.compile(fn, dynamic=True) for name, fn in vars(_EAGER).items()})


@functools.cache
def compile_supported() -> str | None:
    """None when ``torch.compile`` can build CPU kernels here, else the reason, naming what is missing."""
    try:
        x = torch.ones(2, 3)
        if not torch.allclose(_compiled_kernels().silu_mul(x, x), silu_mul(x, x)):
            return "compiled probe gave different numbers"
    except Exception as exc:
        return compile_problem(exc)
    return None


def compile_problem(exc: BaseException) -> str:
    """What stopped ``torch.compile`` in ``exc``, said as what is missing and how to add it.

    Why not the exception's first line: inductor wraps every failure of the C++ build in "CppCompileError:
    C++ compile error", and the cause (a missing ``Python.h`` in an image without Python's headers, a
    compiler that is not there) sits in the compiler's output further down.
    """
    text = str(exc)
    if "Python.h" in text:
        include = sysconfig.get_path("include")
        return (f"Python's C headers are missing (no Python.h in {include}): install them for this interpreter "
                f"(Debian/Ubuntu: python{sys.version_info.major}.{sys.version_info.minor}-dev)")
    if "InvalidCxxCompiler" in text or type(exc).__name__ == "InvalidCxxCompiler":
        compiler = os.environ.get("CXX", "g++")
        return f"no working C++ compiler ({compiler} was tried): install one (Debian/Ubuntu: g++) or set CXX"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    detail = next((line for line in lines if "error:" in line and line != lines[0]), None)
    first = lines[0] if lines else ""
    return f"{type(exc).__name__}: {first}" + (f" ({detail})" if detail else "")


@dataclass(frozen=True)
class _Layer:
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    q: torch.nn.Linear
    k: torch.nn.Linear
    v: torch.nn.Linear
    o: torch.nn.Linear
    q_norm: torch.Tensor
    k_norm: torch.Tensor
    gate: torch.nn.Linear
    up: torch.nn.Linear
    down: torch.nn.Linear


class FusedQwen3Forward:
    """Runs a transformers ``Qwen3Model`` (its weights, not its forward) and returns last-token states.

    Raises ``ValueError`` for configurations this forward does not implement (sliding-window layers),
    so the caller can keep transformers' forward for them. ``split_min_columns``: chunks after a cache from
    this width on take the split attention where the device has it (1: every such chunk; tests, warm-up).
    """

    def __init__(self, body: Any, *, compile_kernels: bool,
                 split_min_columns: int = SPLIT_ATTENTION_MIN_COLUMNS) -> None:
        config = body.config
        if getattr(config, "use_sliding_window", False) or any(
                t != "full_attention" for t in getattr(config, "layer_types", None) or ["full_attention"]):
            raise ValueError("sliding-window attention is not implemented by the fused forward")
        self.body = body
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.eps = config.rms_norm_eps
        self.scale = self.head_dim ** -0.5
        self.compiled = compile_kernels
        self.kernels = _compiled_kernels() if compile_kernels else _EAGER
        self.split_min_columns = split_min_columns
        self.layers = [
            _Layer(input_norm=layer.input_layernorm.weight, post_norm=layer.post_attention_layernorm.weight,
                   q=layer.self_attn.q_proj, k=layer.self_attn.k_proj, v=layer.self_attn.v_proj,
                   o=layer.self_attn.o_proj, q_norm=layer.self_attn.q_norm.weight,
                   k_norm=layer.self_attn.k_norm.weight, gate=layer.mlp.gate_proj, up=layer.mlp.up_proj,
                   down=layer.mlp.down_proj)
            for layer in body.layers
        ]

    @property
    def device(self) -> torch.device:
        return self.body.embed_tokens.weight.device

    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, past_visible: torch.Tensor | None,
                 past: KVCache | None = None, keep_cache: bool = False,
                 select: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, KVCache | None]:
        """One chunk of right-padded rows. Returns final-normed hidden states and the cache (``past``
        itself, extended, when given and ``keep_cache``).

        ``past_visible`` (rows, cached positions), boolean: which cached keys each row may attend (False for
        a shorter prefix's padding); required with ``past``. Within the chunk attention is causal: rows are
        right-padded, so a real token never sees padding and padding queries are never read.

        ``select`` = (row indices, column indices): the only positions whose output is wanted (a scorer needs
        one token per row). The hidden states come back as (len(rows), hidden), and the last layer runs its
        keys and values for every token (the attention over them needs them) but its queries, attention,
        output projection and MLP for the selected tokens only: 1/28 of the 0.6B model's work, skipped.
        Without ``select``: (rows, T, hidden).
        """
        k_ = self.kernels
        rows, width = ids.shape
        hidden = self.body.embed_tokens(ids)
        cos, sin = self.body.rotary_emb(hidden, positions)
        residual = hidden
        x = k_.rms_norm(hidden, self.layers[0].input_norm, self.eps)
        # Per chunk, not per layer: with a cache, a dense boolean mask for one SDPA call, or for long chunks
        # (split attention) an additive bias hiding the cached keys a row may not see.
        attention = choose_attention(ids.device, width, past is not None, self.split_min_columns)
        split = attention is AttentionKernel.SPLIT
        if past is None:
            mask = None
        else:
            assert past_visible is not None, "past_visible is required with a cache"
            mask = self._padding_bias(past_visible, width, x.dtype) if split else self._dense_mask(past_visible, width)
        # Extended in place, layer by layer: each layer's old keys/values are freed as soon as the longer
        # ones exist, so a long document chunked over a growing cache never holds two copies of it.
        cache = past if past is not None else []
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if i == last and select is not None:
                return self._selected_last_layer(layer, x, residual, cos, sin, past_visible, past, cache,
                                                 keep_cache, select), (cache if keep_cache else None)
            q, k = k_.qk_norm_rope(layer.q(x), layer.k(x), layer.q_norm, layer.k_norm, cos, sin,
                                   self.head_dim, self.eps)
            v = layer.v(x).view(rows, width, -1, self.head_dim).transpose(1, 2)
            if split:
                assert past is not None and mask is not None
                attended = self._split_attention(q, past[i][0], past[i][1], k, v, mask)
                self._extend_cache(i, k, v, past, cache, keep_cache)
            else:
                k, v = self._extend_cache(i, k, v, past, cache, keep_cache)
                attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                                          scale=self.scale, enable_gqa=True)
            out = layer.o(attended.transpose(1, 2).reshape(rows, width, -1))
            residual, x = self._mlp(i, layer, out, residual)
        return x, (cache if keep_cache else None)

    @staticmethod
    def _dense_mask(past_visible: torch.Tensor, width: int) -> torch.Tensor:
        """(rows, 1, T, past + T) boolean: the visible cached keys, then causal over the chunk."""
        rows = past_visible.shape[0]
        causal = torch.ones(width, width, dtype=torch.bool, device=past_visible.device).tril()
        return torch.cat([past_visible[:, None, :].expand(rows, width, -1),
                          causal[None].expand(rows, -1, -1)], dim=2)[:, None]

    @staticmethod
    def _padding_bias(past_visible: torch.Tensor, width: int, dtype: torch.dtype) -> torch.Tensor:
        """(rows, 1, T, past) additive bias for the cached part of split attention: -inf on hidden keys."""
        bias = torch.zeros(past_visible.shape, dtype=dtype, device=past_visible.device)
        bias.masked_fill_(~past_visible, float("-inf"))
        return bias[:, None, None, :].expand(-1, 1, width, -1)

    def _split_attention(self, q: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor, k: torch.Tensor,
                         v: torch.Tensor, past_bias: torch.Tensor) -> torch.Tensor:
        """Attention over cached + own keys as two flash calls merged by their log-sum-exps.

        Why: with a cache in front, one SDPA call needs a dense mask, and the CPU flash kernel then computes
        every block of the chunk's upper triangle only to mask it out. Split, the chunk's own part runs
        ``is_causal`` (the kernel skips the masked blocks) and the cached part needs only a per-row padding
        mask. On the AMX Xeon, one layer of 2 rows × 2048 columns after a 70-token prefix: 76 → 47 ms; at
        512 columns the two calls cost more than they save (22 → 29 ms), hence ``split_min_columns``.
        """
        if not split_attention_supported(q.device):
            raise ValueError(f"split attention runs ATen's CPU flash kernel only, not on {q.device.type}")
        group = q.shape[1] // k.shape[1]  # GQA: query head h reads key/value head h // group
        flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        out_past, lse_past = flash(q, past_k.repeat_interleave(group, 1), past_v.repeat_interleave(group, 1), 0.0,
                                   False, attn_mask=past_bias, scale=self.scale)[:2]
        out_own, lse_own = flash(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), 0.0, True,
                                 scale=self.scale)[:2]
        return self.kernels.merge_attention(out_past, lse_past, out_own, lse_own)

    @staticmethod
    def _extend_cache(i: int, k: torch.Tensor, v: torch.Tensor, past: KVCache | None, cache: KVCache,
                      keep_cache: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``i``'s keys/values after the cached ones; stored in ``cache`` when it is kept."""
        if past is not None:
            k = torch.cat([past[i][0], k], dim=2)
            v = torch.cat([past[i][1], v], dim=2)
            if keep_cache:
                cache[i] = (k, v)
        elif keep_cache:
            cache.append((k, v))
        return k, v

    def _mlp(self, i: int, layer: _Layer, attn_out: torch.Tensor,
             residual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Residual add, post-attention norm, MLP, residual add and the next norm (the final one after the
        last layer): returns (residual stream, normed input of what comes next)."""
        k_ = self.kernels
        residual, x = k_.add_rms_norm(attn_out, residual, layer.post_norm, self.eps)
        out = layer.down(k_.silu_mul(layer.gate(x), layer.up(x)))
        next_norm = self.body.norm.weight if i == len(self.layers) - 1 else self.layers[i + 1].input_norm
        return k_.add_rms_norm(out, residual, next_norm, self.eps)

    def _selected_last_layer(self, layer: _Layer, x: torch.Tensor, residual: torch.Tensor, cos: torch.Tensor,
                             sin: torch.Tensor, past_visible: torch.Tensor | None, past: KVCache | None,
                             cache: KVCache, keep_cache: bool,
                             select: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The last layer for the selected (row, column) positions only; keys/values for all (see __call__)."""
        k_ = self.kernels
        rows, width = x.shape[:2]
        at_rows, at_cols = select
        i = len(self.layers) - 1
        if at_rows.numel() == 0:
            # No row ends in this chunk (a long document continues): only the keys/values are needed. Query
            # column 0 of every row as a stand-in, so the kernel sees the shapes it was compiled for.
            q_rows, q_cols = torch.arange(rows, device=x.device), torch.zeros(rows, dtype=torch.long, device=x.device)
        else:
            q_rows, q_cols = at_rows, at_cols
        # One kernel call normalises and rotates the selected queries and all keys.
        q_sel, k = k_.qk_norm_rope(layer.q(x[q_rows, q_cols][:, None]), layer.k(x), layer.q_norm, layer.k_norm,
                                   cos[q_rows, q_cols][:, None], sin[q_rows, q_cols][:, None], self.head_dim,
                                   self.eps, cos, sin)
        v = layer.v(x).view(rows, width, -1, self.head_dim).transpose(1, 2)
        k, v = self._extend_cache(i, k, v, past, cache, keep_cache)
        if at_rows.numel() == 0:
            return x.new_zeros((0, x.shape[-1]))
        allowed = torch.arange(width, device=x.device)[None, :] <= at_cols[:, None]  # own keys up to the query
        if past_visible is not None:
            allowed = torch.cat([past_visible[at_rows], allowed], dim=1)
        allowed = allowed[:, None, None]
        attended = F.scaled_dot_product_attention(q_sel, k[at_rows], v[at_rows], attn_mask=allowed,
                                                  scale=self.scale, enable_gqa=True)
        out = layer.o(attended.transpose(1, 2).reshape(len(at_rows), 1, -1))
        _, final = self._mlp(i, layer, out, residual[at_rows, at_cols][:, None])
        return final[:, 0]
