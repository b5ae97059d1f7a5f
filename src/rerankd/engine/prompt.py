"""The Qwen3-Reranker prompt: template, tokenization and truncation.

This is the part that must match the model card exactly. The card tokenizes
``<Instruct>: …\\n<Query>: …\\n<Document>: {doc}`` as ONE string (so BPE merges across the
query/document boundary are whatever the tokenizer does there), cuts that token list's tail to the
length budget, and wraps it in the pre-tokenized system PREFIX and assistant SUFFIX. We do the same,
and use the offsets mapping to know which tokens belong to the document so that only the document
is ever cut.

The shared-prefix optimisation needs no special tokenization: all prompts of one query start with the
same tokens, and :func:`common_prefix_length` finds how many, token by token, so reuse is exact.

Beyond cutting a document's tail, the builder knows three ways to fit a long document, each defined on the
same token list (the pair string tokenized as one, its leading tokens that hold no document character being
the *head*): cut its **head** instead (TEI's ``truncation_direction: Left``: the head tokens, then the
document's last tokens); cut the **whole prompt** to a token count (vLLM's ``truncate_prompt_tokens``: a
smaller model length); or **chunk** it (Cohere v1's ``max_chunks_per_doc``): the document's tokens in windows
of the chunk length with an overlap, each window a prompt of its own (head tokens, window, SUFFIX), so chunk
0 is exactly the prompt tail truncation would give. The query is never cut by any of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from rerankd.engine.text_cut import PrefixCutter, encode_prefixes
from rerankd.errors import BadRequestError, QueryTooLongError, UnprocessableError

__all__ = [
    "DEFAULT_INSTRUCTION",
    "PREFIX",
    "SUFFIX",
    "Direction",
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
Direction = Literal["right", "left"]
"""Which end of a document truncation cuts: its tail (``right``, the card's) or its head (``left``)."""
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
    chunks: list[int] | None = None
    """Chunked documents only: how many tails each document has (tails come document by document, chunk 0
    first). ``None``: one tail per document. ``truncated[i]`` then tells whether chunks were dropped."""

    @property
    def prompt_tokens(self) -> int:
        """Tokens billed: every pair counted in full, as if no prefix were shared."""
        return len(self.shared) * len(self.tails) + sum(len(t) for t in self.tails)

    def document_tokens(self) -> list[int]:
        """Tokens billed for each document: each of its prompts (every chunk) counted in full."""
        per_tail = [len(self.shared) + len(t) for t in self.tails]
        if self.chunks is None:
            return per_tail
        return [sum(part) for part in _per_document(per_tail, self.chunks)]

    def best_chunks(self, raw: Sequence[float]) -> tuple[list[float], list[int] | None]:
        """Each document's score from its tails' raw scores: the max over its chunks, and which chunk it is
        (the lowest index among equal scores). Unchunked: the scores as they are, and ``None``."""
        if self.chunks is None:
            return list(raw), None
        scores: list[float] = []
        winners: list[int] = []
        for part in _per_document(list(raw), self.chunks):
            best = max(range(len(part)), key=lambda k: (part[k], -k))
            scores.append(part[best])
            winners.append(best)
        return scores, winners


def _per_document(values: list[Any], counts: Sequence[int]) -> list[list[Any]]:
    out: list[list[Any]] = []
    start = 0
    for n in counts:
        out.append(values[start : start + n])
        start += n
    return out


class PromptBuilder:
    """Turns (query, documents, instruction) into token ids the way the model card does."""

    def __init__(self, tokenizer: Any, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.prefix_ids: list[int] = tokenizer.encode(PREFIX, add_special_tokens=False)
        self.suffix_ids: list[int] = tokenizer.encode(SUFFIX, add_special_tokens=False)
        # Cuts giant documents before tokenizing without changing which tokens survive truncation.
        self._cutter = PrefixCutter(tokenizer)

    @property
    def pair_budget(self) -> int:
        """Tokens left for instruction + query + document once PREFIX and SUFFIX are placed."""
        return self.max_model_len - len(self.prefix_ids) - len(self.suffix_ids)

    def _budget(self, max_prompt_tokens: int | None) -> int:
        """The pair budget under a whole-prompt cap (vLLM's ``truncate_prompt_tokens``), which may not exceed
        the model length (vLLM refuses it too)."""
        if max_prompt_tokens is None:
            return self.pair_budget
        if max_prompt_tokens > self.max_model_len:
            raise BadRequestError(
                f"`truncate_prompt_tokens` is {max_prompt_tokens}, more than the model length "
                f"{self.max_model_len}; send at most {self.max_model_len}, or -1 for the model length",
                field="truncate_prompt_tokens")
        return max_prompt_tokens - len(self.prefix_ids) - len(self.suffix_ids)

    def build(
        self,
        query: str,
        documents: Sequence[str],
        instruction: str | None = None,
        max_tokens_per_doc: int | None = None,
        *,
        direction: Direction = "right",
        max_prompt_tokens: int | None = None,
        max_chunks: int | None = None,
        chunk_overlap: int = 0,
    ) -> PromptGroup:
        """Tokenize and truncate (or chunk) every pair of one query.

        ``max_tokens_per_doc`` caps the document's tokens in a prompt; ``max_prompt_tokens`` the whole prompt
        (template included); ``direction`` says which end of a document is cut. With ``max_chunks``, a document
        longer than its budget (what both caps leave after the head) becomes up to ``max_chunks`` prompts whose
        windows overlap by ``chunk_overlap`` tokens, and ``direction`` does not apply.

        Raises :class:`QueryTooLongError` when instruction + query alone exceed the budget,
        :class:`UnprocessableError` when ``chunk_overlap`` is not below the chunk length.
        """
        budget = self._budget(max_prompt_tokens)
        head = _head(query, instruction)
        head_ids = self._encode([head], offsets=False)[0][0]
        if len(head_ids) > budget:
            template = len(self.prefix_ids) + len(self.suffix_ids)
            if max_prompt_tokens is not None:
                raise QueryTooLongError(
                    f"query and instruction take {len(head_ids) + template} tokens with the prompt template, more "
                    f"than `truncate_prompt_tokens` {max_prompt_tokens}; raise `truncate_prompt_tokens` or shorten "
                    "`query` or `instruction`", field="truncate_prompt_tokens")
            raise QueryTooLongError(
                f"query and instruction take {len(head_ids) + template}"
                f" tokens with the prompt template, more than the model length {self.max_model_len}; "
                "shorten `query` or `instruction`"
            )
        doc_cap = budget if max_tokens_per_doc is None else min(budget, len(head_ids) + max_tokens_per_doc)
        if max_chunks is not None:
            _check_chunk_length(doc_cap - len(head_ids), chunk_overlap)
            doc_cap = len(head_ids) + (doc_cap - len(head_ids)) * max_chunks  # every chunk's window, end to end
        char_cap = self._cutter.safe_length(doc_cap)
        # Offsets only when the head's token count is needed (a per-document cap, a head cut, chunks): for 1000
        # long documents they are ~10^6 tuples, built and freed per request, that fragment the small-object heap
        # and stay in the process's RSS.
        need_head = max_tokens_per_doc is not None or direction == "left" or max_chunks is not None
        if direction == "left" and max_chunks is None:
            cuts = [min(len(doc), char_cap) for doc in documents]
            id_lists, offset_lists = self._encode([head + doc[-char_cap:] for doc in documents], need_head)
        else:
            cuts, id_lists, offset_lists = self._encode_prefixes(head, documents, doc_cap + 1, need_head)
        bodies: list[list[int]] = []
        truncated: list[bool] = []
        counts: list[int] = []
        for ids, offsets, doc, cut in zip(id_lists, offset_lists, documents, cuts, strict=True):
            cut_chars = len(doc) > cut
            h = _head_token_count(offsets, len(head)) if need_head else 0
            if max_chunks is not None:
                room = budget - h if max_tokens_per_doc is None else min(budget - h, max_tokens_per_doc)
                windows, dropped = _chunk_windows(len(ids) - h, room, chunk_overlap, max_chunks)
                bodies.extend(self.prefix_ids + ids[:h] + ids[h + start : h + end] for start, end in windows)
                counts.append(len(windows))
                truncated.append(dropped or cut_chars)
                continue
            keep = min(len(ids), budget)
            if max_tokens_per_doc is not None:
                keep = min(keep, h + max_tokens_per_doc)
            if direction == "left":
                bodies.append(self.prefix_ids + ids[:h] + ids[len(ids) - max(0, keep - h) :])
            else:
                bodies.append(self.prefix_ids + ids[:keep])
            truncated.append(keep < len(ids) or cut_chars)
        shared_len = common_prefix_length(bodies)
        return PromptGroup(
            shared=bodies[0][:shared_len] if bodies else list(self.prefix_ids),
            tails=[body[shared_len:] + self.suffix_ids for body in bodies],
            truncated=truncated,
            chunks=counts if max_chunks is not None else None,
        )


    def _encode_prefixes(self, head: str, documents: Sequence[str], tokens: int, offsets: bool
                         ) -> tuple[list[int], list[list[int]], list[Sequence[tuple[int, int]]]]:
        """Tokenize ``head + document`` for each document, each cut to a prefix that surely yields the whole
        text's first ``tokens`` tokens (:func:`rerankd.engine.text_cut.encode_prefixes`). Returns each
        document's cut length with its tokens and offsets."""
        def encode(texts: list[str]) -> list[tuple[list[int], Sequence[tuple[int, int]]]]:
            ids, spans = self._encode(texts, offsets)
            return list(zip(ids, spans, strict=True))

        cuts, encoded = encode_prefixes(self._cutter, encode, lambda e: len(e[0]), head, documents, tokens)
        return cuts, [ids for ids, _ in encoded], [spans for _, spans in encoded]

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


def _check_chunk_length(size: int, overlap: int) -> None:
    """Refuse chunking that cannot advance: no room for a document token, or an overlap not below the chunk
    length. ``size`` is the request's chunk length with the head tokenized alone; a document's own head is at
    most one token shorter (the head's final space may join the document's first token), never longer, so
    its chunks are at least this long."""
    if size < 1:
        raise QueryTooLongError(
            "query and instruction leave no room for a document token in a chunk; shorten `query` or "
            "`instruction`, or raise `max_tokens_per_doc` / `truncate_prompt_tokens`")
    if overlap >= size:
        raise UnprocessableError(
            f"`chunk_overlap_tokens` is {overlap}, not smaller than the chunk length of {size} tokens "
            "(`max_tokens_per_doc`, or what the model length leaves after the query and instruction); "
            "send a smaller overlap", field="chunk_overlap_tokens")


def _chunk_windows(length: int, size: int, overlap: int, max_chunks: int) -> tuple[list[tuple[int, int]], bool]:
    """Token windows ``[start, end)`` over a document of ``length`` tokens: ``size`` long, each starting
    ``size - overlap`` after the previous, the last one reaching the end (shorter when it does), at most
    ``max_chunks`` of them; and whether tokens were left past the last window."""
    step = max(1, size - overlap)  # >= 1 after _check_chunk_length; max() only keeps a bad caller from looping
    windows = [(0, min(size, length))]
    while windows[-1][1] < length and len(windows) < max_chunks:
        start = windows[-1][0] + step
        windows.append((start, min(start + size, length)))
    return windows, windows[-1][1] < length


def _head_token_count(offsets: Sequence[tuple[int, int]], head_chars: int) -> int:
    """Number of leading tokens that hold no document character."""
    for i, (_, end) in enumerate(offsets):
        if end > head_chars:
            return i
    return len(offsets)
