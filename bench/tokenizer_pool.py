"""How long a small request's tokenization waits while a large request's is under way in another thread.

The Hugging Face tokenizer's batch call runs on one thread pool shared by the whole process; a batch call
made while another request's large batch occupies the pool queues behind it. ``PromptBuilder`` tokenizes a
request of up to ``SEQUENTIAL_TEXTS`` texts one by one on its own thread instead (and a large one in slices
of ``BATCH_SLICE``). Printed: a 3-document build alone, during a ``--docs``-document build (``PromptBuilder``
as shipped), and with one batch call per request for both (what it did before), with the large one's time.

    python bench/tokenizer_pool.py --model /work/models/tiny
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable
from typing import Any


def timed_during_large(build: Callable[[str, list[str]], Any], large: list[str],
                       small: list[str]) -> dict[str, float]:
    """Run ``build`` of ``large`` in a thread; once it has had 50 ms, time ``build`` of ``small``."""
    large_seconds: list[float] = []

    def run_large() -> None:
        started = time.perf_counter()
        build("large", large)
        large_seconds.append(time.perf_counter() - started)

    thread = threading.Thread(target=run_large)
    thread.start()
    time.sleep(0.05)
    started = time.perf_counter()
    build("small", small)
    small_ms = (time.perf_counter() - started) * 1000
    thread.join()
    return {"small_ms": round(small_ms, 1), "large_ms": round(large_seconds[0] * 1000, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="/work/models/tiny")
    parser.add_argument("--docs", type=int, default=500, help="documents of the large request")
    parser.add_argument("--words", type=int, default=300, help="words per large document")
    parser.add_argument("--max-model-len", type=int, default=256)
    args = parser.parse_args()

    from rerankd.engine.model_source import load_tokenizer
    from rerankd.engine.prompt import PromptBuilder, format_pair

    tokenizer = load_tokenizer(args.model)
    builder = PromptBuilder(tokenizer, args.max_model_len)
    large = [f"{i} " + " ".join(f"word{j % 97}" for j in range(args.words)) for i in range(args.docs)]
    small = ["alpha", "beta gamma", "delta epsilon zeta"]
    builder.build("warm", small)
    started = time.perf_counter()
    builder.build("small", small)
    alone_ms = (time.perf_counter() - started) * 1000

    def batch_call(query: str, docs: list[str]) -> None:  # one batch call per request, as build did before
        tokenizer([format_pair(query, d) for d in docs], add_special_tokens=False, return_attention_mask=False)

    print(json.dumps({
        "docs": args.docs, "words": args.words, "small_alone_ms": round(alone_ms, 2),
        "as_shipped": timed_during_large(builder.build, large, small),
        "one_batch_call_per_request": timed_during_large(batch_call, large, small),
    }, indent=2))


if __name__ == "__main__":
    main()
