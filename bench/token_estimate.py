"""How far the gateway's tokens/min estimate is above what a replica bills, on a BEIR-format corpus.

The gateway reserves ``estimate_prompt_tokens`` (an upper bound, from UTF-8 byte lengths) before it
forwards a request and settles to the billed count after; this prints both for one query against every
document of the corpus, so the admission headroom a tokens/min limit needs can be read off.

    python bench/token_estimate.py tests/data/beir-mini --tokenizer /work/models/tiny
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import AutoTokenizer

from rerankd.engine.prompt import PromptBuilder
from rerankd.gateway.cost import estimate_prompt_tokens
from rerankd.protocol import RerankTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="a BEIR directory (corpus.jsonl, queries.jsonl)")
    parser.add_argument("--tokenizer", required=True, help="a Qwen3 reranker (or its tokenizer) directory")
    parser.add_argument("--max-model-len", type=int, default=32768)
    args = parser.parse_args()
    with (args.data / "corpus.jsonl").open(encoding="utf-8") as corpus:
        documents = [(d.get("title", "") + " " + d["text"]).strip() for d in map(json.loads, corpus)]
    with (args.data / "queries.jsonl").open(encoding="utf-8") as queries:
        query = json.loads(next(queries))["text"]
    builder = PromptBuilder(AutoTokenizer.from_pretrained(args.tokenizer), max_model_len=args.max_model_len)
    billed = builder.build(query, documents).prompt_tokens
    estimate = estimate_prompt_tokens([RerankTask(query, documents)], args.max_model_len)
    print(f"{args.data}: {len(documents)} documents, billed {billed} tokens, estimate {estimate} "
          f"({estimate / billed:.2f}x)")


if __name__ == "__main__":
    main()
