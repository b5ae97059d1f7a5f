"""Splitting one large embedding request across replicas, and merging the answers in input order.

Why it is exact: an input's vector depends only on that input (and the request's options: instruction,
``dimensions``, encoding), never on its neighbours, so embedding contiguous slices of the input list on
different replicas yields the same vectors. Each part's body is the client's body with the list replaced by
its slice (every other field kept as sent); the merge puts the vectors back by input index and sums the
tokens each part reports.

The list field is the dialect's: ``input`` (OpenAI), ``inputs`` (TEI), ``texts`` (Cohere v2 and v1). A single string,
or a single token-id list, is one input and is never split.
"""

from __future__ import annotations

import json
import math
from typing import Any

from rerankd.gateway.answers import COHERE_SHAPES, AnswerShape, cohere_tokens
from rerankd.gateway.tokens import usage_tokens

__all__ = ["LIST_FIELD", "EmbedSplitPlan", "merge_embed_parts", "part_tokens", "plan_embed_split"]

LIST_FIELD = {AnswerShape.OPENAI_EMBED: "input", AnswerShape.TEI_EMBED: "inputs",
              AnswerShape.COHERE_EMBED: "texts", AnswerShape.COHERE_V1_EMBED: "texts"}


class EmbedSplitPlan:
    """The slices ``[start, end)`` of the inputs, one per part, and the body each part sends."""

    def __init__(self, shape: AnswerShape, data: dict[str, Any], parts: int) -> None:
        self.shape = shape
        self.field = LIST_FIELD[shape]
        self.data = data
        n = len(data[self.field])
        size = math.ceil(n / max(1, min(parts, n)))
        self.slices = [(start, min(start + size, n)) for start in range(0, n, size)]

    def bodies(self) -> list[bytes]:
        bodies = []
        for start, end in self.slices:
            part = dict(self.data)
            part[self.field] = self.data[self.field][start:end]
            bodies.append(json.dumps(part, ensure_ascii=False, separators=(",", ":")).encode())
        return bodies


def plan_embed_split(shape: AnswerShape, body: bytes, inputs: int, threshold: int,
                     replicas: int) -> EmbedSplitPlan | None:
    """A plan when the request has more than ``threshold`` inputs and more than one replica can help."""
    if inputs <= threshold or replicas < 2:
        return None
    data = json.loads(body)
    values = data.get(LIST_FIELD[shape]) if isinstance(data, dict) else None
    if not isinstance(values, list) or len(values) != inputs:  # one token-id list is one input
        return None
    return EmbedSplitPlan(shape, data, min(replicas, math.ceil(inputs / threshold)))


def merge_embed_parts(plan: EmbedSplitPlan, answers: list[Any], tokens: list[int]) -> tuple[Any, int]:
    """One answer as a single replica would have given it, and the tokens of all the parts.

    ``tokens`` are the counts each part reported (its header or body, already checked). Raises
    KeyError/TypeError/ValueError on a part of the wrong shape (the caller's 502).
    """
    total = sum(tokens)
    if plan.shape is AnswerShape.TEI_EMBED:
        return [vector for answer in answers for vector in answer], total
    if plan.shape is AnswerShape.OPENAI_EMBED:
        data = []
        for (start, _end), answer in zip(plan.slices, answers, strict=True):
            for item in sorted(answer["data"], key=lambda d: int(d["index"])):
                data.append({**item, "index": start + int(item["index"])})
        first = answers[0]
        return {**first, "data": data, "usage": {"prompt_tokens": total, "total_tokens": total}}, total
    first = answers[0]
    embeddings: Any
    if isinstance(first["embeddings"], list):  # Cohere v1's embeddings_floats: the vectors themselves
        embeddings = [v for answer in answers for v in answer["embeddings"]]
    else:
        embeddings = {kind: [v for answer in answers for v in answer["embeddings"][kind]]
                      for kind in first["embeddings"]}
    texts = [t for answer in answers for t in answer.get("texts", [])]
    meta = {**first.get("meta", {}), "billed_units": {"input_tokens": total}}
    return {**first, "embeddings": embeddings, "texts": texts, "meta": meta}, total


def part_tokens(shape: AnswerShape, answer: Any) -> int:
    """The tokens a part's body reports when its reply had no ``x-prompt-tokens`` header."""
    return cohere_tokens(answer) if shape in COHERE_SHAPES else usage_tokens(answer)
