"""Where to cut a long text before tokenizing it, so that its first tokens come out as the whole text's would.

Right truncation keeps a text's first N tokens; tokenizing the whole of a 100k-character document to keep 500
of its tokens is almost all waste (a 1000-document request of ~23k-token documents spent ~0.5 s of CPU per
replica on tokens it threw away; issue 18). Two cuts are offered:

- :meth:`PrefixCutter.safe_length`: ``tokens x`` the longest vocabulary entry in characters. No token spans
  more characters, so the kept tokens cannot change; but Qwen3's vocabulary holds 128-character entries, so
  this still tokenizes ~25x more text than an ordinary document needs.
- :meth:`PrefixCutter.quick_length`: a cut at a **pre-token boundary** about ``tokens x`` :data:`CHARS_PER_TOKEN`
  characters in. A byte-level BPE tokenizer (Qwen's) splits the normalised text into pre-tokens with a regex
  and runs BPE on each pre-token alone, so the text before a boundary tokenizes to exactly the tokens the
  whole text gives there. The cut is taken only where that argument holds without subtlety: the normaliser
  is NFC (or none) and the text up to the cut is already NFC with a starter at the cut that does not compose
  with its left neighbour (so normalising does not move the boundary), and the character before the cut is
  not whitespace (the regex's only lookahead, ``\\s+(?!\\S)``, then plays no part in where the pre-token
  before the cut ends). The caller checks the cut text gave at least the tokens it needs and falls back to
  :meth:`safe_length` where it did not (text denser in characters per token than the guess).

tests/unit/test_text_cut.py checks the quick cut against whole-text tokenization on adversarial texts.
"""

from __future__ import annotations

import bisect
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

__all__ = ["CHARS_PER_TOKEN", "PrefixCutter", "encode_prefixes"]

CHARS_PER_TOKEN = (4, 16)
"""The quick cut's guesses of characters per token, tried in turn: ordinary English runs ~4 (prose with long
words a little more), Chinese ~1.5, code ~3. A text the first cut leaves short of tokens is cut again with the
second; one denser still (long runs the vocabulary holds as single tokens) falls back to the safe cut."""
T = TypeVar("T")
_WINDOW_SLACK = 256
"""Characters pre-tokenized past the guess, so a boundary after it is found (the last pre-tokens of a cut
window are not trusted: the whole text may continue them)."""


class PrefixCutter:
    """Cut lengths for one tokenizer (built once per prompt builder)."""

    def __init__(self, tokenizer: Any) -> None:
        vocab = tokenizer.get_vocab()
        self.max_chars_per_token = max(8, max(len(token) for token in vocab))
        self._pre_tokenizer = _splitting_pre_tokenizer(tokenizer)

    def safe_length(self, tokens: int) -> int:
        """Characters that hold at least ``tokens`` tokens' worth of text whatever the text."""
        return tokens * self.max_chars_per_token

    def quick_length(self, head: str, body: str, tokens: int, chars_per_token: int = CHARS_PER_TOKEN[0]
                     ) -> int | None:
        """A cut ``b`` of ``body`` (``0 < b < len(body)``) where ``head + body[:b]`` tokenizes to the first tokens
        of ``head + body``, placed so that it probably holds ``tokens`` of them; ``None`` when the body is short
        enough to tokenize whole or no boundary near the guess is certain."""
        guess = max(1, tokens * chars_per_token - len(head))
        if self._pre_tokenizer is None or len(body) <= guess + _WINDOW_SLACK:
            return None
        window = head + body[: guess + _WINDOW_SLACK]
        if not unicodedata.is_normalized("NFC", window):
            return None
        pieces = self._pre_tokenizer.pre_tokenize_str(window)[:-2]  # the last ones may run on in the whole text
        first = bisect.bisect_left(pieces, len(head) + guess, key=lambda piece: piece[1][0])
        for _, (begin, _end) in pieces[first:]:
            at = begin - len(head)
            if _clean_boundary(body, at):
                return int(at)
        return None


def encode_prefixes(cutter: PrefixCutter, encode: Callable[[list[str]], list[T]], count: Callable[[T], int],
                    head: str, bodies: Sequence[str], tokens: int) -> tuple[list[int], list[T]]:
    """``encode(head + body[:cut])`` for every body, each cut so that it surely yields the whole text's first
    ``tokens`` tokens (``count`` tells how many an encoding holds): the quick cuts in turn where they give that
    many, else the safe cut. Returns each body's cut length and encoding."""
    safe = cutter.safe_length(tokens)
    cuts = [min(len(body), safe) for body in bodies]
    done: list[T | None] = [None] * len(bodies)
    pending = list(range(len(bodies)))
    for chars_per_token in CHARS_PER_TOKEN:
        quick = {i: cutter.quick_length(head, bodies[i], tokens, chars_per_token) for i in pending}
        tried = [i for i in pending if quick[i] is not None]
        for i, encoded in zip(tried, encode([head + bodies[i][: quick[i]] for i in tried]), strict=True):
            if count(encoded) >= tokens:
                cuts[i], done[i] = quick[i] or 0, encoded
        pending = [i for i in pending if done[i] is None]
    for i, encoded in zip(pending, encode([head + bodies[i][: cuts[i]] for i in pending]), strict=True):
        done[i] = encoded
    return cuts, [encoded for encoded in done if encoded is not None]


def _splitting_pre_tokenizer(tokenizer: Any) -> Any:
    """The Rust pre-tokenizer of a fast tokenizer whose normaliser is NFC or none; else ``None`` (no quick cut)."""
    rust = getattr(tokenizer, "backend_tokenizer", None)
    if rust is None or rust.pre_tokenizer is None:
        return None
    try:
        from tokenizers import normalizers
    except ImportError:  # pragma: no cover - transformers' fast tokenizers need the package
        return None
    normalizer = rust.normalizer
    if normalizer is not None and not isinstance(normalizer, normalizers.NFC):
        return None
    return rust.pre_tokenizer


def _clean_boundary(text: str, at: int) -> bool:
    """Whether cutting ``text`` at ``at`` leaves the normalised text and the pre-token before ``at`` unchanged."""
    left, right = text[at - 1], text[at]
    if left.isspace() or unicodedata.combining(right):
        return False
    return unicodedata.normalize("NFC", left + right) == left + right
