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
  ``template + head + max_tokens_per_doc`` when the request sets ``max_tokens_per_doc``.

For English prose the bound is about 4x the real count (about 4 bytes per token); the difference is
refunded when the request settles, so it only matters for admission.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from rerankd.engine.prompt import format_pair
from rerankd.protocol import RerankRequest, RerankTask, ScoreRequest, TEIRerankRequest

__all__ = ["TEMPLATE_TOKENS", "ScoringBody", "estimate_prompt_tokens", "scoring_tasks", "text_bytes"]

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
        cap = max_model_len if task.max_tokens_per_doc is None else min(max_model_len, fixed + task.max_tokens_per_doc)
        total += sum(min(fixed + text_bytes(document), cap) for document in task.documents)
    return total


ScoringBody = RerankRequest | TEIRerankRequest | ScoreRequest
"""Every body shape a scoring route accepts."""


def scoring_tasks(body: ScoringBody) -> list[RerankTask]:
    """Every scoring body shape as the (query, documents) pairs a replica bills."""
    if isinstance(body, ScoreRequest):  # a task per pair: the same bound, without grouping by query
        return [RerankTask(query, [document], body.instruction, body.truncate_prompt_tokens)
                for query, document in body.pairs()]
    return [body.to_task()]
