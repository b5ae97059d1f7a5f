"""What a scoring request may cost in tokens, known before it is forwarded.

The gateway reserves a request's tokens-per-minute cost at admission and settles it with the replica's
real count afterwards (:mod:`rerankd.gateway.ratelimit`). For the budget never to be overshot, the
reservation must be an UPPER bound of what the replica will bill, and it must be cheap: the gateway
holds no tokenizer. The bound used here, and why it holds for a rerankd replica:

* The replica bills each (query, document) pair in full: ``len(PREFIX ids) + len(head + document ids,
  after truncation) + len(SUFFIX ids)`` (:class:`rerankd.engine.prompt.PromptBuilder`), where ``head``
  is ``<Instruct>: …\\n<Query>: …\\n<Document>: ``.
* Qwen3's tokenizer is byte-level BPE after an NFC normalizer: every token covers at least one byte of
  the normalized text (special tokens cover many), so a text's token count is at most the UTF-8 byte
  length of its NFC form. (NFC can lengthen a few characters, e.g. U+0958 becomes two code points; so
  the bytes are counted after normalizing, not before.) The head ends in an ASCII space, which composes
  with nothing, so ``NFC(head + document) = NFC(head) + NFC(document)`` and the two are counted apart.
* PREFIX and SUFFIX are tokenized on their own, so their exact counts are constants
  (:data:`TEMPLATE_TOKENS`, checked against the real tokenizer by ``tests/unit/test_gateway_cost.py``).
* Truncation only lowers the count: a pair never exceeds the replica's model length, nor
  ``template + head + max_tokens_per_doc`` when the request sets ``max_tokens_per_doc``, nor
  ``truncate_prompt_tokens`` when it sets that (whichever end of the document is cut).
* A chunked document (``max_chunks_per_doc`` M, overlap O) bills each of its n ≤ M chunks as a pair: at most
  ``template + head + D`` each, where D, the chunk length, is at least ``cap - template - head`` (the head is
  at most ``head`` tokens), and together at most ``n × (template + head) + document + (n - 1) × O`` (the
  windows cover the document once, plus each overlap). n is at most the count of windows of that shortest
  D over ``document`` tokens, and at most M.

For English prose the bound is about 4x the real count (about 4 bytes per token); the difference is
refunded when the request settles, so it only matters for admission.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence

from rerankd.embedding_protocol import (
    CohereEmbedRequest,
    CohereV1EmbedRequest,
    OpenAIEmbeddingRequest,
    TEIEmbedRequest,
)
from rerankd.engine.embedding import DEFAULT_EMBED_INSTRUCTION
from rerankd.engine.prompt import format_pair
from rerankd.protocol import RerankRequest, RerankTask, ScoreRequest, TEIRerankRequest, prompt_tokens_cap

__all__ = ["EMBED_TEMPLATE_TOKENS", "TEMPLATE_TOKENS", "EmbeddingBody", "ScoringBody", "estimate_embed_tokens",
           "estimate_prompt_tokens", "scoring_tasks", "text_bytes"]

# Qwen3 tokenizer: PREFIX is 39 tokens, SUFFIX 9 (rerankd.engine.prompt; pinned by a test).
TEMPLATE_TOKENS = 39 + 9


def text_bytes(text: str) -> int:
    """An upper bound of the Qwen3 tokens of ``text``: the UTF-8 length of its NFC form."""
    if text.isascii():
        return len(text)  # NFC leaves ASCII alone; the common case costs no copy
    return len(unicodedata.normalize("NFC", text).encode("utf-8"))


def estimate_prompt_tokens(tasks: Sequence[RerankTask], max_model_len: int) -> int:
    """At least the ``usage.prompt_tokens`` a rerankd replica will report for these tasks.

    ``max_model_len`` is the replicas' model length (each pair is cut to fit it;
    ``--upstream-max-model-len``); a replica with a longer one could bill more than this bound, and
    the settlement would then charge the excess.
    """
    total = 0
    for task in tasks:
        head = text_bytes(format_pair(task.query, "", task.instruction))
        fixed = TEMPLATE_TOKENS + head
        cap = max_model_len if task.max_prompt_tokens is None else min(max_model_len, task.max_prompt_tokens)
        if task.max_tokens_per_doc is not None:
            cap = min(cap, fixed + task.max_tokens_per_doc)
        if task.max_chunks_per_doc is None:
            total += sum(min(fixed + text_bytes(document), cap) for document in task.documents)
        else:
            total += sum(_chunked_bound(text_bytes(document), fixed, cap, task.max_chunks_per_doc,
                                        task.chunk_overlap_tokens) for document in task.documents)
    return total


def _chunked_bound(document: int, fixed: int, cap: int, max_chunks: int, overlap: int) -> int:
    """At least what a document of at most ``document`` tokens bills in chunks (module docstring)."""
    shortest = cap - fixed  # the chunk length is at least this
    if document <= shortest:
        return min(fixed + document, cap)
    chunks = max_chunks if shortest <= overlap else min(
        max_chunks, 1 + math.ceil((document - shortest) / (shortest - overlap)))
    return min(chunks * cap, chunks * fixed + document + (chunks - 1) * overlap)


ScoringBody = RerankRequest | TEIRerankRequest | ScoreRequest
"""Every body shape a scoring route accepts."""

EmbeddingBody = OpenAIEmbeddingRequest | TEIEmbedRequest | CohereEmbedRequest | CohereV1EmbedRequest
"""Every body shape an embedding route accepts."""

# Qwen3-Embedding's query prompt is ``Instruct: {instruction}\nQuery:`` before the text and every input ends
# in one end-of-text token: a few tokens of template, bounded with room to spare.
EMBED_TEMPLATE_TOKENS = 16


def estimate_embed_tokens(body: EmbeddingBody, max_model_len: int) -> int:
    """At least the prompt tokens a rerankd replica reports for an embedding request: per input, its bytes
    (a token-id input: its length) plus the instruction's bytes and the template, each cut to the model length.

    A TEI ``prompt_name`` names one of the model's prompts, unknown here; it is bounded by the model length.
    """
    task = body.to_task()
    head = EMBED_TEMPLATE_TOKENS + (text_bytes(task.instruction or DEFAULT_EMBED_INSTRUCTION) if task.is_query else 0)
    if task.prompt_name is not None:
        return len(task.inputs) * max_model_len
    total = 0
    for item in task.inputs:
        size = len(item) if isinstance(item, list) else text_bytes(item)
        total += min(head + size, max_model_len)
    return total


def scoring_tasks(body: ScoringBody) -> list[RerankTask]:
    """Every scoring body shape as the (query, documents) pairs a replica bills."""
    if isinstance(body, ScoreRequest):  # a task per pair: the same bound, without grouping by query
        return [RerankTask(query, [document], body.instruction,
                           max_prompt_tokens=prompt_tokens_cap(body.truncate_prompt_tokens))
                for query, document in body.pairs()]
    return [body.to_task()]
