"""CPU spent tokenizing documents far longer than the model length, with the quick cut and with the safe cut only.

Right truncation keeps a document's first tokens. ``PromptBuilder`` cuts each document before tokenizing it: at a
pre-token boundary a few characters per needed token in (the quick cut, exact: rerankd.engine.text_cut), else at
tokens x the longest vocabulary entry (the safe cut, 128 characters a token for Qwen3). Printed: CPU seconds of
one build per workload for both, and whether the prompts are identical.

    python bench/giant_tokenization.py --model /work/models/tiny
"""

from __future__ import annotations

import argparse
import json
import random
import time
from typing import Any


def workloads(seed: int) -> dict[str, tuple[list[str], int]]:
    """Name → (documents, model length): long prose-like documents, and the hostile-client test's giants."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    prose = [" ".join(rng.choice(words) for _ in range(16000)) for _ in range(200)]
    hostile = [f"{i} " + " ".join(f"word{j % 97}" for j in range(300)) for i in range(1000)]
    return {"200 docs x ~104k chars, max-model-len 512": (prose, 512),
            "1000 docs x ~2.1k chars (tests/reliability/test_hostile.py), max-model-len 256": (hostile, 256)}


def cpu_seconds(builder: Any, documents: list[str]) -> tuple[float, Any]:
    started = time.process_time()  # all threads: the Rust tokenizer's pool included
    group = builder.build("what is this about?", documents)
    return time.process_time() - started, group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="/work/models/tiny")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from rerankd.engine.model_source import load_tokenizer
    from rerankd.engine.prompt import PromptBuilder

    tokenizer = load_tokenizer(args.model)
    rows = []
    for name, (documents, max_len) in workloads(args.seed).items():
        quick = PromptBuilder(tokenizer, max_len)
        safe = PromptBuilder(tokenizer, max_len)
        safe._cutter.quick_length = lambda *_: None  # type: ignore[method-assign]  # the safe cut only
        safe_s, safe_group = cpu_seconds(safe, documents)
        quick_s, quick_group = cpu_seconds(quick, documents)
        rows.append({"workload": name, "safe_cut_cpu_s": round(safe_s, 3), "quick_cut_cpu_s": round(quick_s, 3),
                     "speedup": round(safe_s / max(quick_s, 1e-9), 1), "identical": quick_group == safe_group})
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
