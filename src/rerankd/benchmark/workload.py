"""Deterministic rerank workloads: one query × N documents of known token lengths.

Why token lengths and not characters: throughput is a function of tokens, so a benchmark that says
"documents of 256 tokens" must measure them with the model's own tokenizer (the real Qwen3 one), not
guess from word counts. Every document is generated from a seed, so two runs, or a server run and an
in-process baseline, score exactly the same texts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "QUERIES",
    "LengthSpec",
    "Request",
    "Workload",
    "document_lengths",
    "load_tokenizer",
    "make_text",
    "make_workload",
    "parse_length_spec",
]

QUERIES = [
    "how do solar panels convert sunlight into electricity?",
    "what are the health effects of drinking coffee every day?",
    "history of the printing press in europe",
    "best practices for securing a home wifi network",
    "why do rivers change course over time?",
    "how does a compiler optimise loops?",
    "causes and treatment of seasonal allergies",
    "what is the role of the central bank in inflation?",
]

_WORD_TEXT = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her she there been one all we their has would when if so no will can more about said time "
    "new could only other people into after some any these two may first then do energy solar panel light cell "
    "current voltage silicon photon electron power grid battery system design research study results method "
    "data model process water heat temperature efficiency material surface layer module inverter sunlight roof "
    "cost market city river history music game school student teacher report government policy law health food "
    "garden travel weather mountain coffee network compiler loop bank inflation allergy press printing"
)
_WORDS = _WORD_TEXT.split()


@dataclass(frozen=True)
class LengthSpec:
    """Document lengths in tokens: ``low``..``high``, drawn log-uniformly (``mixed``) or evenly spread."""

    low: int
    high: int
    mixed: bool

    def describe(self) -> str:
        if self.low == self.high:
            return f"{self.low}"
        return f"{self.low}-{self.high}" + (" mixed" if self.mixed else "")


def parse_length_spec(text: str) -> LengthSpec:
    """``256`` (≈256 ± 6%), ``240-272`` (evenly spread) or ``mixed`` / ``mixed:64-2048`` (log-uniform)."""
    text = text.strip().lower()
    if text.startswith("mixed"):
        rest = text.partition(":")[2] or "64-2048"
        low, high = (int(x) for x in rest.split("-"))
        spec = LengthSpec(low, high, mixed=True)
    elif "-" in text:
        low, high = (int(x) for x in text.split("-"))
        spec = LengthSpec(low, high, mixed=False)
    else:
        n = int(text)
        spread = max(0, round(n * 0.0625))
        spec = LengthSpec(n - spread, n + spread, mixed=False)
    if spec.low < 1 or spec.high < spec.low:
        raise ValueError(f"bad document length spec {text!r}: want N, LOW-HIGH or mixed:LOW-HIGH with 1 ≤ LOW ≤ HIGH")
    return spec


def document_lengths(n: int, spec: LengthSpec, seed: int) -> list[int]:
    """Target token length of each of ``n`` documents.

    ``mixed`` draws log-uniformly (many short documents, a long tail, as in real first-stage results);
    otherwise the lengths are spread evenly over ``low..high`` so the mean is exactly the midpoint.
    """
    if n <= 0:
        return []
    if spec.mixed:
        rng = random.Random(seed)
        lo, hi = math.log(spec.low), math.log(spec.high)
        return [min(spec.high, max(spec.low, round(math.exp(rng.uniform(lo, hi))))) for _ in range(n)]
    return [spec.low + (i * (spec.high - spec.low)) // max(1, n - 1) for i in range(n)]


def make_text(rng: random.Random, n_words: int) -> str:
    """English-looking sentences of 8-18 words from a fixed vocabulary."""
    out: list[str] = []
    sentence: list[str] = []
    limit = rng.randint(8, 18)
    for _ in range(n_words):
        sentence.append(rng.choice(_WORDS))
        if len(sentence) >= limit:
            s = " ".join(sentence)
            out.append(s[0].upper() + s[1:] + ".")
            sentence, limit = [], rng.randint(8, 18)
    if sentence:
        s = " ".join(sentence)
        out.append(s[0].upper() + s[1:] + ".")
    return " ".join(out)


def _sized_documents(tokenizer: Any, targets: Sequence[int], seed: int) -> list[str]:
    """Texts whose token count is each target (± a token or two where decoding re-merges at the cut).

    One over-long text per document is tokenized once and cut at the target token, which is far faster
    than growing word counts until the tokenizer agrees (1000 documents in about a second).
    """
    texts = [make_text(random.Random(seed * 1_000_003 + i), int(t * 1.1) + 8) for i, t in enumerate(targets)]
    encoded = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    docs: list[str] = []
    for i, (ids, target) in enumerate(zip(encoded, targets, strict=True)):
        while len(ids) < target:  # rare: the word list tokenized shorter than expected
            texts[i] += " " + make_text(random.Random(seed + i), target)
            ids = tokenizer(texts[i], add_special_tokens=False)["input_ids"]
        docs.append(tokenizer.decode(ids[:target]))
    return docs


@dataclass(frozen=True)
class Request:
    """One rerank request: a query and its documents, with their token counts."""

    query: str
    documents: list[str]
    doc_tokens: list[int]

    @property
    def n_docs(self) -> int:
        return len(self.documents)

    def body(self, model: str | None = None) -> dict[str, Any]:
        """The JSON body of ``POST /v1/rerank`` (scores only: documents are not echoed back)."""
        body: dict[str, Any] = {"query": self.query, "documents": self.documents, "return_documents": False}
        if model:
            body["model"] = model
        return body


@dataclass(frozen=True)
class Workload:
    """A set of distinct requests of the same shape; load drivers cycle through them."""

    n_docs: int
    lengths: LengthSpec
    seed: int
    requests: list[Request]

    @property
    def name(self) -> str:
        return f"{self.n_docs} docs × {self.lengths.describe()} tok"

    @property
    def doc_tokens_mean(self) -> float:
        counts = [c for r in self.requests for c in r.doc_tokens]
        return sum(counts) / len(counts) if counts else 0.0


def make_workload(tokenizer: Any, n_docs: int, lengths: LengthSpec | str, *, seed: int = 0,
                  variants: int = 4) -> Workload:
    """``variants`` distinct requests of ``n_docs`` documents each, every one reproducible from ``seed``.

    Several variants, because a server (or an upstream cache) must not see the very same body every
    time; each variant has its own query and documents but the same length distribution.
    """
    spec = parse_length_spec(lengths) if isinstance(lengths, str) else lengths
    requests = []
    for v in range(variants):
        vseed = seed * 7919 + v
        targets = document_lengths(n_docs, spec, vseed)
        docs = _sized_documents(tokenizer, targets, vseed)
        encoded = tokenizer(docs, add_special_tokens=False, return_attention_mask=False)["input_ids"] if docs else []
        counts = [len(ids) for ids in encoded]
        requests.append(Request(QUERIES[(seed + v) % len(QUERIES)], docs, counts))
    return Workload(n_docs, spec, seed, requests)


def load_tokenizer(model: str | None = None) -> Any:
    """The tokenizer of ``model`` (a local directory), else the real Qwen3 tokenizer shipped offline."""
    from transformers import AutoTokenizer

    if model:
        return AutoTokenizer.from_pretrained(model)
    from rerankd.devtools.random_model import qwen_tokenizer_dir

    return AutoTokenizer.from_pretrained(str(qwen_tokenizer_dir()))


def one_request(model: str, n_docs: int, lengths: LengthSpec | str, seed: int = 0) -> tuple[Any, Request]:
    """The tokenizer of ``model`` and one deterministic request: what the single-request CPU scripts time."""
    tokenizer = load_tokenizer(model)
    return tokenizer, make_workload(tokenizer, n_docs, lengths, seed=seed, variants=1).requests[0]
