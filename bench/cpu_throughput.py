"""CPU throughput: the model card recipe and sentence-transformers CrossEncoder vs rerankd's engine path,
plus one row per optimisation switched off (before/after).

Workload: one query × ``--docs`` documents of ``--doc-tokens`` tokens (default 64 × ~256: 240-272), the
Qwen3-Reranker 0.6B shape with random weights, on this machine's CPU. Every timed call goes from text
to scores (tokenization included). Variants are *interleaved* (v1, v2, …, v1, v2, …) so that noise from
other processes on the shared cores spreads over all rows instead of hitting one; medians are reported.

Variants (``--variants``, comma-separated):

``--malloc tcmalloc`` re-runs the script under tcmalloc (every variant then shares it: the allocator is
per process); the default, ``system``, is glibc's malloc, what a plain ``python`` running the card gets.

* ``card`` — the model card recipe (full LM head, left padding, batches of ``--card-batch``), bf16.
* ``cross-encoder`` — sentence-transformers CrossEncoder on the same weights as a one-logit classifier.
* ``rerankd`` — PromptBuilder + batcher split (length-sorted, ``--batch-tokens``) + TorchBackend
  (w_yes − w_no row, shared-prefix reuse, fused forward with compiled element-wise kernels), bf16.
* ``rerankd:OPT[:OPT…]`` — the same with options: ``full-vocab`` (compute the whole LM head, as the card),
  ``naive`` (card-style fixed batches of ``--card-batch`` rows in request order), ``no-prefix``,
  ``tokens=N`` (token budget), ``threads=N``, ``fp32``, ``autocast`` (fp32 weights and residual stream,
  bf16 autocast), ``mkldnn-bf16`` (fp32 model, oneDNN bf16 matmuls), ``eager`` (eager attention),
  ``compile`` (torch.compile of the whole transformers body, dynamic shapes), ``no-fused`` (transformers'
  forward instead of the fused one with compiled element-wise kernels, ``--compile off``), ``all-positions``
  (the fused forward's last layer over every token, then the last one picked, instead of only the last tokens),
  ``no-split`` (one masked attention call after a cache even for long chunks, instead of the split one). ``full-vocab``,
  ``eager``, ``autocast``, ``mkldnn-bf16`` and ``compile`` patch transformers' modules, so they run its
  forward too (compare them with ``rerankd:no-fused``). ``card:threads=N`` and ``card:fp32`` work too.

Usage::

    python bench/cpu_throughput.py --variants card,cross-encoder,rerankd --repeats 3
    python bench/cpu_throughput.py --variants rerankd,rerankd:full-vocab,rerankd:no-prefix --out bench/results/cpu_ablation_prefix.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchlib.agreement import compare_scores
from benchlib.cpu import add_malloc_option, mkldnn_bf16_matmuls
from benchlib.engine_path import engine_scores, micro_batches, naive_batches, padded_tokens
from benchlib.results import write_result
from rerankd.allocator import loaded_allocator, use_allocator
from rerankd.benchmark.reference import NO_ID, YES_ID, CardRecipe, CrossEncoderBaseline, build_sequence_classifier
from rerankd.benchmark.report import cpu_name
from rerankd.benchmark.workload import make_workload
from rerankd.engine.backends.decoders import FusedDecoder
from rerankd.engine.backends.qwen3_forward import FusedQwen3Forward
from rerankd.engine.backends.torch_backend import TorchBackend, cpu_has_fast_bf16
from rerankd.engine.prompt import PromptBuilder

HERE = Path(__file__).resolve().parent
MAX_LEN = 8192


class _FullVocabBody(torch.nn.Module):
    """The backend's body followed by the full LM head at every position: the "before" of the w_diff row."""

    def __init__(self, body: torch.nn.Module, head: torch.nn.Module) -> None:
        super().__init__()
        self.body, self.head = body, head

    def forward(self, **kwargs: Any) -> Any:
        out = self.body(**kwargs)
        self.logits = self.head(out.last_hidden_state)  # kept like the card keeps its output
        return out




class _AllPositions:
    """The fused forward without ``select``: its last layer runs every token (the "before" of that change)."""

    def __init__(self, fused: Any) -> None:
        self.fused = fused

    def __call__(self, ids: Any, positions: Any, mask: Any, past: Any = None, keep_cache: bool = False,
                 select: Any = None) -> Any:
        hidden, cache = self.fused(ids, positions, mask, past=past, keep_cache=keep_cache)
        return hidden[select[0], select[1]], cache


class Variant:
    """One row: a scorer plus the options it runs under."""

    def __init__(self, spec: str, args: argparse.Namespace, shared: dict[str, Any]) -> None:
        self.spec = spec
        kind, *opts = spec.split(":")
        self.kind = kind
        self.opts = dict([*o.split("=", 1), ""][:2] for o in opts)
        self.threads = int(self.opts.get("threads") or args.threads)
        self.args = args
        model = args.model
        if kind == "card":
            card_dtype = "float32" if "fp32" in self.opts else "bfloat16"
            self.scorer: Any = CardRecipe(model, dtype=card_dtype, max_length=MAX_LEN)
        elif kind == "cross-encoder":
            cls_dir = build_sequence_classifier(model, Path(tempfile.gettempdir()) / "rerankd-seq-cls" / Path(model).name)
            self.scorer = CrossEncoderBaseline(cls_dir, dtype="bfloat16", max_length=MAX_LEN)
        elif kind == "rerankd":
            dtype = "float32" if {"fp32", "autocast", "mkldnn-bf16"} & set(self.opts) else "bfloat16"
            # Options that patch transformers' modules need its forward, not the fused one.
            fused = not ({"no-fused", "compile", "full-vocab", "eager", "autocast", "mkldnn-bf16"} & set(self.opts))
            key = (dtype, "compile" in self.opts, fused)
            if key not in shared:  # one loaded model per dtype; flags below are switched per call
                backend = TorchBackend(model, yes_token_id=YES_ID, no_token_id=NO_ID, max_model_len=MAX_LEN,
                                       device="cpu", dtype=dtype, compile="on" if fused else "off")
                if "compile" in self.opts:  # transformers' decoder (fused is False): compile the body it runs
                    backend.decoder.body = torch.compile(backend.decoder.body, dynamic=True)
                shared[key] = backend
            self.scorer = shared[key]
            self.builder = shared["builder"]
        else:
            raise SystemExit(f"unknown variant {spec!r}")

    def __call__(self, query: str, docs: list[str]) -> list[float]:
        torch.set_num_threads(self.threads)
        if self.kind in ("card", "cross-encoder"):
            return self.scorer.score(query, docs, batch=self.args.card_batch)
        backend = self.scorer
        decoder = backend.decoder  # put back after the call: options below swap or patch it
        body = getattr(decoder, "body", None)  # transformers' decoder: the module it runs
        backend.prefix_reuse = "no-prefix" not in self.opts
        if "no-split" in self.opts:
            fused = decoder.forward
            backend.decoder = FusedDecoder(FusedQwen3Forward(fused.body, compile_kernels=fused.compiled,
                                                             split_min_columns=1 << 30))
        if "all-positions" in self.opts:
            backend.decoder = FusedDecoder(_AllPositions(backend.decoder.forward))
        if "full-vocab" in self.opts:
            decoder.body = _FullVocabBody(body, backend._model.get_output_embeddings())
        if "eager" in self.opts:
            backend._model.set_attn_implementation("eager")
        ctx: Any = contextlib.nullcontext()
        if "autocast" in self.opts:
            ctx = torch.autocast("cpu", dtype=torch.bfloat16)
        elif "mkldnn-bf16" in self.opts:
            ctx = mkldnn_bf16_matmuls()
        try:
            with ctx:
                return engine_scores(
                    backend, self.builder, query, docs,
                    max_batch_tokens=int(self.opts.get("tokens") or self.args.batch_tokens),
                    naive_rows=self.args.card_batch if "naive" in self.opts else None,
                )
        finally:
            backend.decoder = decoder
            if body is not None:
                decoder.body = body
            backend.prefix_reuse = True
            if "eager" in self.opts:
                backend._model.set_attn_implementation("sdpa")

    def describe_batches(self, query: str, docs: list[str]) -> dict[str, Any]:
        if self.kind != "rerankd":
            return {}
        group = self.builder.build(query, docs)
        if "naive" in self.opts:
            batches = naive_batches(group.shared, group.tails, self.args.card_batch)
        else:
            batches = micro_batches(group.shared, group.tails, int(self.opts.get("tokens") or self.args.batch_tokens))
        real = sum(len(t) for t in group.tails) + len(group.shared) * len(batches)
        computed = padded_tokens(batches)
        return {"micro_batch_rows": [len(ix) for ix, _ in batches], "computed_tokens": computed,
                "padding_waste": 1 - real / computed}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="/work/models/qwen3-reranker-0.6b-random")
    p.add_argument("--variants", default="card,cross-encoder,rerankd")
    p.add_argument("--docs", type=int, default=64)
    p.add_argument("--doc-tokens", default="240-272")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-tokens", type=int, default=8192)
    p.add_argument("--card-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    add_malloc_option(p)
    p.add_argument("--out", default=str(HERE / "results" / "cpu_throughput.json"))
    args = p.parse_args(argv)
    use_allocator(args.malloc)  # may re-execute this script with the library preloaded

    model_dir = Path(args.model)
    if not (model_dir / "config.json").exists():
        print(f"building random 0.6b model into {model_dir}", flush=True)
        subprocess.run([sys.executable, "-m", "rerankd.devtools.random_model", "--shape", "0.6b",
                        "--out", str(model_dir), "--dtype", "bfloat16"], check=True)
    torch.manual_seed(0)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    workload = make_workload(tokenizer, args.docs, args.doc_tokens, seed=args.seed, variants=1)
    request = workload.requests[0]
    query, docs = request.query, request.documents
    builder = PromptBuilder(tokenizer, MAX_LEN)
    group = builder.build(query, docs)
    n_tokens = sum(len(group.shared) + len(t) for t in group.tails)
    print(f"{len(docs)} pairs, docs {min(request.doc_tokens)}-{max(request.doc_tokens)} tokens, prompts "
          f"{n_tokens} tokens, shared prefix {len(group.shared)}", flush=True)

    specs = [s.strip() for s in args.variants.split(",") if s.strip()]
    variants = [Variant(s, args, {"builder": builder}) for s in specs]

    # Same tokens everywhere: the baselines must feed the model exactly rerankd's prompts.
    token_check = {}
    ours = [group.shared + t for t in group.tails]
    for v in variants:
        if v.kind in ("card", "cross-encoder"):
            token_check[v.spec] = v.scorer.prompt_ids(query, docs) == ours

    times: dict[str, list[float]] = {v.spec: [] for v in variants}
    scores: dict[str, list[float]] = {}
    for v in variants:  # warm-up: a 4-document call per variant (first-call allocations, compile)
        t0 = time.perf_counter()
        v(query, docs[:4])
        print(f"[{v.spec}] warm-up {time.perf_counter() - t0:.1f}s", flush=True)
    for r in range(args.repeats):
        for v in variants:
            t0 = time.perf_counter()
            scores[v.spec] = v(query, docs)
            times[v.spec].append(time.perf_counter() - t0)
            print(f"[{v.spec}] run {r + 1}/{args.repeats}: {times[v.spec][-1]:.2f}s", flush=True)
        # Written after every round: on shared cores a run can take long, and a partial result is still a result.
        _report(args, argv, specs, variants, times, scores, query, docs, request, group, n_tokens, token_check, model_dir)


def _report(args: argparse.Namespace, argv: list[str] | None, specs: list[str], variants: list[Variant],
            times: dict[str, list[float]], scores: dict[str, list[float]], query: str, docs: list[str],
            request: Any, group: Any, n_tokens: int, token_check: dict[str, bool], model_dir: Path) -> None:
    ref = next((s for s in specs if s == "card"), specs[0])
    rows = []
    for v in variants:
        med = statistics.median(times[v.spec])
        row = {"variant": v.spec, "threads": v.threads, "times_s": times[v.spec], "median_s": med,
               "pairs_per_s": len(docs) / med, "tokens_per_s": n_tokens / med,
               **v.describe_batches(query, docs)}
        if v.spec != ref:
            row["vs_" + ref] = compare_scores(scores[ref], scores[v.spec])
        rows.append(row)
    base = next(r["median_s"] for r in rows if r["variant"] == ref)
    for row in rows:
        row["speedup_vs_" + ref] = base / row["median_s"]

    lines = ["| variant | median s | pairs/s | tokens/s | × " + ref + " | max abs Δscore vs " + ref + " | Spearman | ranking identical |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        c = row.get("vs_" + ref)
        cmp = f"{c['max_abs_delta_score']:.2e} | {c['spearman']:.4f} | {'yes' if c['ranking_identical'] else 'no'}" if c else "— | — | —"
        lines.append(f"| {row['variant']} | {row['median_s']:.2f} | {row['pairs_per_s']:.2f} | {row['tokens_per_s']:.0f} | "
                     f"{row['speedup_vs_' + ref]:.2f} | {cmp} |")
    table = "\n".join(lines)
    print("\n" + table)
    command = "python bench/cpu_throughput.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    result = {
        "command": command.strip(),
        "setup": {
            "model": str(model_dir), "shape": "Qwen3-Reranker-0.6B (random weights)", "device": "cpu",
            "cpu": cpu_name(), "cpu_count": os.cpu_count(), "cpu_fast_bf16": cpu_has_fast_bf16(),
            "malloc": loaded_allocator() or "system (glibc)",
            "torch": torch.__version__, "transformers": __import__("transformers").__version__,
            "python": platform.python_version(), "pairs": len(docs), "doc_tokens": args.doc_tokens,
            "doc_tokens_min": min(request.doc_tokens), "doc_tokens_max": max(request.doc_tokens),
            "doc_tokens_mean": statistics.fmean(request.doc_tokens), "prompt_tokens_total": n_tokens,
            "shared_prefix_tokens": len(group.shared), "baseline_token_lists_identical": token_check,
            "repeats": args.repeats, "repeats_completed": min(len(t) for t in times.values()), "interleaved": True, "card_batch": args.card_batch,
            "batch_tokens": args.batch_tokens, "load_average_at_end": os.getloadavg(),
            "timing_scope": "text in, scores out: tokenization + batching + forward + scoring",
            "noise": "2 vCPUs shared with other agents' test runs; compare rows of one file only",
        },
        "rows": rows,
        "table_markdown": table,
    }
    out = Path(args.out)
    write_result(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
