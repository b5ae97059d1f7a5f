"""CPU throughput: the Qwen3-Reranker model card recipe vs rerankd's engine path.

One query x 64 documents of ~256 tokens (240-272), Qwen3-Reranker 0.6B shape with random weights,
bfloat16, on this machine's CPU. Every timed iteration goes from text to scores (tokenization
included) for all three rows:

* ``card``: the model card's transformers recipe (left padding, full LM head, log_softmax over
  [no, yes]) in batches of ``--card-batch`` pairs.
* ``rerankd``: ``PromptBuilder`` + the token-budget micro-batching of the batcher (rows sorted by
  length, ``--batch-tokens`` per micro-batch) + ``TorchBackend.score`` with shared-prefix reuse.
* ``rerankd (no prefix reuse)``: the same with ``prefix_reuse=False``.

Usage::

    python bench/cpu_throughput.py [--model DIR] [--repeats 3] [--batch-tokens 8192] [--card-batch 8]

Writes ``bench/results/cpu_throughput.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from rerankd.engine.backends.base import TokenGroup
from rerankd.engine.backends.torch_backend import TorchBackend, cpu_has_fast_bf16
from rerankd.engine.prompt import DEFAULT_INSTRUCTION, PREFIX, SUFFIX, PromptBuilder, format_pair

YES_ID = 9693
NO_ID = 2152
MAX_LEN = 8192
N_DOCS = 64
QUERY = "how do solar panels convert sunlight into electricity?"

_WORDS = ["the", "of", "and", "to", "in", "a", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an", "they", "you", "were", "her", "she", "there", "been", "one", "all", "we", "their", "has", "would", "when", "if", "so", "no", "will", "can", "more", "about", "said", "time", "new", "could", "only", "other", "people", "into", "after", "some", "any", "these", "two", "may", "first", "then", "do", "energy", "solar", "panel", "light", "cell", "current", "voltage", "silicon", "photon", "electron", "power", "grid", "battery", "system", "design", "research", "study", "results", "method", "data", "model", "process", "water", "heat", "temperature", "efficiency", "material", "surface", "layer", "module", "inverter", "sunlight", "roof", "cost", "market", "city", "river", "history", "music", "game", "school", "student", "teacher", "report", "government", "policy", "law", "health", "food", "garden", "travel", "weather", "mountain"]

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "cpu_throughput.json"


def make_text(rng: random.Random, n_words: int) -> str:
    out, sentence = [], []
    for _ in range(n_words):
        sentence.append(rng.choice(_WORDS))
        if len(sentence) >= rng.randint(8, 18):
            s = " ".join(sentence)
            out.append(s[0].upper() + s[1:] + ".")
            sentence = []
    if sentence:
        s = " ".join(sentence)
        out.append(s[0].upper() + s[1:] + ".")
    return " ".join(out)


def make_documents(tokenizer, n: int, seed: int = 1234) -> list[str]:
    """Deterministic English-ish documents with 240-272 tokens each (checked with the tokenizer)."""
    docs = []
    for i in range(n):
        target = 240 + (i * 32) // max(1, n - 1)  # spread 240..272
        # Grow the word count until the token count reaches the target, then trim.
        n_words = int(target * 0.8)
        text = make_text(random.Random(seed * 1000 + i), n_words)
        while len(tokenizer.encode(text, add_special_tokens=False)) < target:
            n_words += 4
            text = make_text(random.Random(seed * 1000 + i), n_words)
        ids = tokenizer.encode(text, add_special_tokens=False)
        text = tokenizer.decode(ids[:target])
        docs.append(text)
    return docs


# ---------------------------------------------------------------------------------------------- card
class CardRecipe:
    """The Qwen3-Reranker model card's reference code, verbatim in substance."""

    def __init__(self, model_dir: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).eval()
        self.prefix_tokens = self.tokenizer.encode(PREFIX, add_special_tokens=False)
        self.suffix_tokens = self.tokenizer.encode(SUFFIX, add_special_tokens=False)
        self.token_true_id = self.tokenizer.convert_tokens_to_ids("yes")
        self.token_false_id = self.tokenizer.convert_tokens_to_ids("no")
        assert (self.token_true_id, self.token_false_id) == (YES_ID, NO_ID)

    def process_inputs(self, pairs: list[str]):
        inputs = self.tokenizer(
            pairs, padding=False, truncation="longest_first", return_attention_mask=False,
            max_length=MAX_LEN - len(self.prefix_tokens) - len(self.suffix_tokens),
        )
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = self.prefix_tokens + ele + self.suffix_tokens
        inputs = self.tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=MAX_LEN)
        return inputs

    @torch.no_grad()
    def compute_logits(self, inputs) -> list[float]:
        batch_scores = self.model(**inputs).logits[:, -1, :]
        true_vector = batch_scores[:, self.token_true_id]
        false_vector = batch_scores[:, self.token_false_id]
        batch_scores = torch.stack([false_vector, true_vector], dim=1)
        batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
        return batch_scores[:, 1].exp().tolist()

    def score(self, query: str, docs: list[str], batch: int) -> list[float]:
        pairs = [format_pair(query, d, DEFAULT_INSTRUCTION) for d in docs]
        out: list[float] = []
        for i in range(0, len(pairs), batch):
            out.extend(self.compute_logits(self.process_inputs(pairs[i : i + batch])))
        return out

    def prompt_ids(self, query: str, docs: list[str]) -> list[list[int]]:
        pairs = [format_pair(query, d, DEFAULT_INSTRUCTION) for d in docs]
        return [ids.tolist() for ids in self.process_inputs(pairs)["input_ids"]]  # left-padded

    def close(self) -> None:
        self.model = None


# ------------------------------------------------------------------------------------------- rerankd
def micro_batches(shared: list[int], tails: list[list[int]], max_batch_tokens: int) -> list[tuple[list[int], TokenGroup]]:
    """The batcher's split: rows sorted by tail length, cut where ``rows * width + prefix`` passes the budget."""
    order = sorted(range(len(tails)), key=lambda i: len(tails[i]))
    batches: list[tuple[list[int], TokenGroup]] = []
    taken: list[int] = []
    width = 0
    for idx in order:
        new_width = max(width, len(tails[idx]) + len(shared))
        cost = (len(taken) + 1) * new_width + len(shared)
        if taken and cost > max_batch_tokens:
            batches.append((taken, TokenGroup(shared, [tails[i] for i in taken])))
            taken, width = [], 0
            new_width = len(tails[idx]) + len(shared)
        taken.append(idx)
        width = new_width
    if taken:
        batches.append((taken, TokenGroup(shared, [tails[i] for i in taken])))
    return batches


def rerankd_score(backend: TorchBackend, builder: PromptBuilder, query: str, docs: list[str], batch_tokens: int) -> list[float]:
    group = builder.build(query, docs, DEFAULT_INSTRUCTION)
    scores = [0.0] * len(docs)
    for indices, tg in micro_batches(group.shared, group.tails, batch_tokens):
        raw = backend.score([tg])[0]
        for i, r in zip(indices, raw, strict=True):
            scores[i] = 1.0 / (1.0 + math.exp(-r))
    return scores


# -------------------------------------------------------------------------------------------- timing
def timed(fn, repeats: int) -> tuple[list[float], list[float]]:
    """One warm-up call, then ``repeats`` timed calls. Returns (times, scores of the last call)."""
    t0 = time.perf_counter()
    fn()
    print(f"    warm-up: {time.perf_counter() - t0:.1f}s", flush=True)
    times, scores = [], []
    for r in range(repeats):
        t0 = time.perf_counter()
        scores = fn()
        times.append(time.perf_counter() - t0)
        print(f"    run {r + 1}/{repeats}: {times[-1]:.1f}s", flush=True)
    return times, scores


def ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return r


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=False))
    va = math.sqrt(sum((x - ma) ** 2 for x in ra))
    vb = math.sqrt(sum((y - mb) ** 2 for y in rb))
    return cov / (va * vb) if va and vb else float("nan")


def top_k(xs: list[float], k: int = 10) -> list[int]:
    return sorted(range(len(xs)), key=lambda i: -xs[i])[:k]


def compare(ref: list[float], other: list[float]) -> dict:
    return {
        "max_abs_delta_score": max(abs(x - y) for x, y in zip(ref, other, strict=False)),
        "spearman": spearman(ref, other),
        "top10_identical_order": top_k(ref) == top_k(other),
        "top10_overlap": len(set(top_k(ref)) & set(top_k(other))),
    }


def row(name: str, times: list[float], n_pairs: int, n_tokens: int, extra: dict | None = None) -> dict:
    med = statistics.median(times)
    return {
        "name": name, "times_s": times, "median_s": med,
        "pairs_per_s": n_pairs / med, "tokens_per_s": n_tokens / med, **(extra or {}),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="/work/models/qwen3-reranker-0.6b-random")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch-tokens", type=int, default=8192)
    p.add_argument("--card-batch", type=int, default=8)
    p.add_argument("--docs", type=int, default=N_DOCS)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)

    model_dir = Path(args.model)
    if not (model_dir / "config.json").exists():
        print(f"building random 0.6b model into {model_dir}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "rerankd.devtools.random_model", "--shape", "0.6b",
             "--out", str(model_dir), "--dtype", "bfloat16"],
            check=True,
        )

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)

    card = CardRecipe(str(model_dir))
    tokenizer = card.tokenizer
    docs = make_documents(tokenizer, args.docs)
    doc_tokens = [len(tokenizer.encode(d, add_special_tokens=False)) for d in docs]
    query_tokens = len(tokenizer.encode(QUERY, add_special_tokens=False))

    # Token accounting and a check that both paths feed the model the same token lists.
    builder = PromptBuilder(tokenizer, MAX_LEN)
    group = builder.build(QUERY, docs, DEFAULT_INSTRUCTION)
    rerankd_prompts = [group.shared + t for t in group.tails]
    pad = tokenizer.pad_token_id
    card_prompts = []
    for ids in card.prompt_ids(QUERY, docs):
        i = 0
        while i < len(ids) and ids[i] == pad:
            i += 1
        card_prompts.append(ids[i:])
    same_tokens = card_prompts == rerankd_prompts
    n_tokens = sum(len(r) for r in rerankd_prompts)
    n_pairs = len(docs)
    mbs = micro_batches(group.shared, group.tails, args.batch_tokens)
    print(
        f"{n_pairs} pairs, query {query_tokens} tokens, docs {min(doc_tokens)}-{max(doc_tokens)} tokens "
        f"(mean {statistics.fmean(doc_tokens):.1f}), prompts {n_tokens} tokens total, shared prefix "
        f"{len(group.shared)} tokens, card and rerankd token lists identical: {same_tokens}; "
        f"rerankd micro-batches at {args.batch_tokens} tokens: {[len(ix) for ix, _ in mbs]}",
        flush=True,
    )

    rows: list[dict] = []
    print(f"[card] batch {args.card_batch}", flush=True)
    times, card_scores = timed(functools.partial(card.score, QUERY, docs, args.card_batch), args.repeats)
    rows.append(row(f"model card recipe (batch {args.card_batch})", times, n_pairs, n_tokens))
    card.close()
    del card
    gc.collect()

    backend = TorchBackend(
        model_dir, yes_token_id=YES_ID, no_token_id=NO_ID, max_model_len=MAX_LEN,
        device="cpu", dtype="bfloat16", prefix_reuse=True,
    )
    print("[rerankd] prefix_reuse=True", flush=True)
    times, rr_scores = timed(lambda: rerankd_score(backend, builder, QUERY, docs, args.batch_tokens), args.repeats)
    rows.append(row("rerankd engine path (prefix reuse)", times, n_pairs, n_tokens, compare(card_scores, rr_scores)))

    backend.prefix_reuse = False
    print("[rerankd] prefix_reuse=False", flush=True)
    times, rr_np_scores = timed(lambda: rerankd_score(backend, builder, QUERY, docs, args.batch_tokens), args.repeats)
    rows.append(row("rerankd engine path (no prefix reuse)", times, n_pairs, n_tokens, compare(card_scores, rr_np_scores)))
    backend.close()

    base = rows[0]["median_s"]
    for r in rows:
        r["speedup_vs_card"] = base / r["median_s"]

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    lines = [
        "| path | median s | pairs/s | tokens/s | × card | max abs Δscore vs card | Spearman vs card | top-10 identical |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        if "max_abs_delta_score" in r:
            cmp = f"{r['max_abs_delta_score']:.2e} | {r['spearman']:.4f} | {'yes' if r['top10_identical_order'] else 'no'} ({r['top10_overlap']}/10 overlap)"
        else:
            cmp = "— | — | —"
        lines.append(
            f"| {r['name']} | {r['median_s']:.2f} | {r['pairs_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
            f"{r['speedup_vs_card']:.2f} | {cmp} |"
        )
    table = "\n".join(lines)
    print()
    print(table)
    print(f"\ncommand: {command}")

    result = {
        "command": command,
        "setup": {
            "model": str(model_dir), "shape": "Qwen3-Reranker-0.6B (random weights)", "dtype": "bfloat16",
            "device": "cpu", "cpu": _cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_fast_bf16": cpu_has_fast_bf16(), "torch": torch.__version__,
            "transformers": __import__("transformers").__version__, "python": platform.python_version(),
            "pairs": n_pairs, "query_tokens": query_tokens, "doc_tokens_min": min(doc_tokens),
            "doc_tokens_max": max(doc_tokens), "doc_tokens_mean": statistics.fmean(doc_tokens),
            "prompt_tokens_total": n_tokens, "shared_prefix_tokens": len(group.shared),
            "token_lists_identical": same_tokens, "repeats": args.repeats, "warmup": 1,
            "card_batch": args.card_batch, "batch_tokens": args.batch_tokens,
            "rerankd_micro_batch_rows": [len(ix) for ix, _ in mbs],
            "timing_scope": "text in, scores out: tokenization + padding + forward + scoring",
        },
        "rows": rows,
        "table_markdown": table,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
