"""The Qwen3-Reranker prompt: template, tokenization and truncation.

This is the part that must match the model card exactly. The card tokenizes
``<Instruct>: …\\n<Query>: …\\n<Document>: {doc}`` as ONE string (so BPE merges across the
query/document boundary are whatever the tokenizer does there), cuts that token list's tail to the
length budget, and wraps it in the pre-tokenized system PREFIX and assistant SUFFIX. We do the same,
and use the offsets mapping to know which tokens belong to the document so that only the document
is ever cut.

The shared-prefix optimisation needs no special tokenization: all prompts of one query start with the
same tokens, and :func:`common_prefix_length` finds how many, token by token, so reuse is exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rerankd.errors import QueryTooLongError

__all__ = [
    "DEFAULT_INSTRUCTION",
    "PREFIX",
    "SUFFIX",
    "PromptBuilder",
    "PromptGroup",
    "common_prefix_length",
    "format_pair",
]

PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
_HEAD_FORMAT = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: "
# Up to this many texts are tokenized one by one on the calling thread, never in the tokenizer's shared thread
# pool: a batch call there queues behind every job another request's large batch put in the pool first (a
# 3-document request waited 1.7 s behind a 500-document one; one by one it takes 0.4 ms meanwhile).
SEQUENTIAL_TEXTS = 16
# More texts are tokenized in batches of this many: between two of them a job that queued in the pool in the
# meantime runs, so a mid-sized request waits for one slice of a large one, not all of it.
BATCH_SLICE = 64


def format_pair(query: str, document: str, instruction: str | None = None) -> str:
    """The model card's ``format_instruction``: the text between PREFIX and SUFFIX."""
    return _head(query, instruction) + document


def _head(query: str, instruction: str | None) -> str:
    return _HEAD_FORMAT.format(instruction=instruction or DEFAULT_INSTRUCTION, query=query)


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by every sequence."""
    if not sequences:
        return 0
    first = sequences[0]
    n = min(len(s) for s in sequences)
    for seq in sequences[1:]:
        i = 0
        while i < n and seq[i] == first[i]:
            i += 1
        n = i
        if n == 0:
            break
    return n


@dataclass(frozen=True)
class PromptGroup:
    """All prompts of one query, split into the tokens they share and each one's own tail.

    ``shared + tails[i]`` is exactly the token list the model card feeds the model for pair i.
    ``truncated[i]`` tells whether pair i's document lost tokens to a length limit.
    """

    shared: list[int]
    tails: list[list[int]]
    truncated: list[bool]

    @property
    def prompt_tokens(self) -> int:
        """Tokens billed: every pair counted in full, as if no prefix were shared."""
        return len(self.shared) * len(self.tails) + sum(len(t) for t in self.tails)


class PromptBuilder:
    """Turns (query, documents, instruction) into token ids the way the model card does."""

    def __init__(self, tokenizer: Any, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.prefix_ids: list[int] = tokenizer.encode(PREFIX, add_special_tokens=False)
        self.suffix_ids: list[int] = tokenizer.encode(SUFFIX, add_special_tokens=False)
        # Longest vocabulary entry in characters: lets us cut giant documents before tokenizing
        # without changing which tokens survive truncation (no token spans more characters).
        vocab = tokenizer.get_vocab()
        self._max_chars_per_token = max(8, max(len(tok) for tok in vocab))

    @property
    def pair_budget(self) -> int:
        """Tokens left for instruction + query + document once PREFIX and SUFFIX are placed."""
        return self.max_model_len - len(self.prefix_ids) - len(self.suffix_ids)

    def build(
        self,
        query: str,
        documents: Sequence[str],
        instruction: str | None = None,
        max_tokens_per_doc: int | None = None,
    ) -> PromptGroup:
        """Tokenize and truncate every pair of one query.

        Raises :class:`QueryTooLongError` when instruction + query alone exceed the budget.
        """
        budget = self.pair_budget
        head = _head(query, instruction)
        head_ids = self._encode([head], offsets=False)[0][0]
        if len(head_ids) > budget:
            raise QueryTooLongError(
                f"query and instruction take {len(head_ids) + len(self.prefix_ids) + len(self.suffix_ids)}"
                f" tokens with the prompt template, more than the model length {self.max_model_len}; "
                "shorten `query` or `instruction`"
            )
        doc_cap = budget if max_tokens_per_doc is None else min(budget, len(head_ids) + max_tokens_per_doc)
        char_cap = doc_cap * self._max_chars_per_token
        texts = [head + doc[:char_cap] for doc in documents]
        # Offsets only when a per-document cap needs them: for 1000 long documents they are ~10^6 tuples, built
        # and freed per request, that fragment the small-object heap and stay in the process's RSS.
        cut_per_doc = max_tokens_per_doc is not None
        id_lists, offset_lists = self._encode(texts, cut_per_doc)
        bodies: list[list[int]] = []
        truncated: list[bool] = []
        for ids, offsets, doc in zip(id_lists, offset_lists, documents, strict=True):
            keep = min(len(ids), budget)
            if max_tokens_per_doc is not None:
                keep = min(keep, _head_token_count(offsets, len(head)) + max_tokens_per_doc)
            bodies.append(self.prefix_ids + ids[:keep])
            truncated.append(keep < len(ids) or len(doc) > char_cap)
        shared_len = common_prefix_length(bodies)
        return PromptGroup(
            shared=bodies[0][:shared_len] if bodies else list(self.prefix_ids),
            tails=[body[shared_len:] + self.suffix_ids for body in bodies],
            truncated=truncated,
        )


    def _encode(self, texts: list[str], offsets: bool) -> tuple[list[list[int]], Sequence[Sequence[tuple[int, int]]]]:
        """Token ids of each text (no special tokens) and, with ``offsets``, each token's character span.

        A few texts go one by one to the Rust tokenizer on this thread (:data:`SEQUENTIAL_TEXTS`); more go
        through the tokenizer's batch call, which shares one thread pool with every other request, in slices
        of :data:`BATCH_SLICE`. Both give the tokens a batch call over all of them would.
        """
        rust = self._sequential_encoder()
        if rust is not None and len(texts) <= SEQUENTIAL_TEXTS:
            encodings = [rust.encode(text, add_special_tokens=False) for text in texts]
            return [e.ids for e in encodings], [e.offsets for e in encodings] if offsets else [()] * len(texts)
        ids: list[list[int]] = []
        spans: list[Sequence[tuple[int, int]]] = []
        for start in range(0, len(texts), BATCH_SLICE):
            part = texts[start:start + BATCH_SLICE]
            encoded = self.tokenizer(
                part, add_special_tokens=False, return_offsets_mapping=offsets, return_attention_mask=False
            )
            ids.extend(encoded["input_ids"])
            spans.extend(encoded["offset_mapping"] if offsets else [()] * len(part))
        return ids, spans

    def _sequential_encoder(self) -> Any:
        """The Rust tokenizer behind a Hugging Face fast tokenizer, when calling it directly gives what the batch
        call gives (no truncation or padding configured on it, special tokens treated alike); else None."""
        rust = getattr(self.tokenizer, "backend_tokenizer", None)
        if rust is None or not hasattr(rust, "encode"):
            return None
        split_special = bool(getattr(self.tokenizer, "split_special_tokens", False))
        if rust.truncation is not None or rust.padding is not None or rust.encode_special_tokens != split_special:
            return None
        return rust


def _head_token_count(offsets: Sequence[tuple[int, int]], head_chars: int) -> int:
    """Number of leading tokens that hold no document character."""
    for i, (_, end) in enumerate(offsets):
        if end > head_chars:
            return i
    return len(offsets)
