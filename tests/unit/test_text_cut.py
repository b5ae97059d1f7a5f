"""The quick cut before tokenizing: the text before it tokenizes exactly as the whole text does there.

Checked on the real Qwen3 tokenizer against whole-text tokenization, with texts built to hit the regex's and
the normaliser's edges: whitespace runs (the ``\\s+(?!\\S)`` lookahead), newlines, contractions, digits (one
pre-token each), long letter runs (one pre-token, BPE across it), Chinese and its punctuation, combining marks
and Hangul jamo (NFC composes them across a cut), emoji.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from rerankd.engine.embedding import EmbeddingPromptBuilder
from rerankd.engine.prompt import PromptBuilder
from rerankd.engine.text_cut import CHARS_PER_TOKEN, PrefixCutter

PIECES = ["a", "b", "the", "word", " ", "  ", "\t", "\n", "\r\n", "\n\n", "'s", "'re", "'", "7", "42", ".", ",",
          "!!", "...", "中", "文本", "，", "。", "é", "😀", "x" * 40, " " * 30, "=" * 20, "ab12cd"]
COMPOSING = ["e\u0301", "\u0301", "\u1100", "\u1161", "\u11a8"]  # NFC changes these (or their neighbours)


def adversarial_text(rng: random.Random, length: int) -> str:
    """Random pieces; one text in four also holds characters that NFC composes."""
    pieces = PIECES + COMPOSING if rng.random() < 0.25 else PIECES
    parts: list[str] = []
    while sum(map(len, parts)) < length:
        parts.append(rng.choice(pieces))
    return "".join(parts)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids)


def test_the_text_before_a_quick_cut_tokenizes_as_the_whole_text(tokenizer: Any) -> None:
    cutter = PrefixCutter(tokenizer)
    rng = random.Random(18)
    cuts = 0
    for _ in range(300):
        head = rng.choice(["", "<Document>: ", "Instruct: x\nQuery:", "q "])
        tokens = rng.randint(1, 40)
        body = adversarial_text(rng, tokens * CHARS_PER_TOKEN[-1] + rng.randint(0, 2000))
        at = cutter.quick_length(head, body, tokens, rng.choice(CHARS_PER_TOKEN))
        if at is None:
            continue
        cuts += 1
        assert 0 < at < len(body)
        whole, part = ids(tokenizer, head + body), ids(tokenizer, head + body[:at])
        assert part == whole[: len(part)], (head, body[:at], body[at:at + 20])
    assert cuts > 150  # the quick cut is taken on most of these texts, so the assertion above means something


def test_no_quick_cut_where_normalisation_would_move_the_boundary(tokenizer: Any) -> None:
    cutter = PrefixCutter(tokenizer)
    decomposed = "e\u0301 " * 400  # not NFC: normalising shortens the text before any cut
    assert cutter.quick_length("", decomposed, 10) is None
    assert cutter.quick_length("", "short text", 10) is None  # short enough to tokenize whole


def test_giant_documents_give_the_same_prompts_as_the_safe_cut(tokenizer: Any) -> None:
    """PromptBuilder with the quick cut against the same builder with only the safe cut, on every path that
    cuts a prefix (tail truncation, a per-document cap, chunks), including text denser than the guess."""
    rng = random.Random(7)
    docs = [adversarial_text(rng, rng.randint(100, 6000)) for _ in range(40)] + ["9" * 5000, "中" * 3000]
    quick = PromptBuilder(tokenizer, 128)
    safe = PromptBuilder(tokenizer, 128)
    safe._cutter.quick_length = lambda *args: None  # type: ignore[method-assign]
    for kwargs in ({}, {"max_tokens_per_doc": 20}, {"max_chunks": 3, "chunk_overlap": 4}):
        assert quick.build("what?", docs, **kwargs) == safe.build("what?", docs, **kwargs), kwargs


def test_embedding_inputs_cut_like_the_safe_cut(tokenizer: Any) -> None:
    rng = random.Random(9)
    texts = [adversarial_text(rng, rng.randint(100, 4000)) for _ in range(30)] + ["7" * 3000]
    quick = EmbeddingPromptBuilder(tokenizer, 64)
    safe = EmbeddingPromptBuilder(tokenizer, 64)
    safe._cutter.quick_length = lambda *args: None  # type: ignore[method-assign]
    for prefix in ("", "Instruct: find\nQuery:"):
        assert quick.build(texts, prefix=prefix) == safe.build(texts, prefix=prefix)
