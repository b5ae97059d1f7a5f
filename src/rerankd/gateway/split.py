"""Splitting one large rerank request across replicas, and merging the answers exactly.

Why it is exact: a document's score depends only on (instruction, query, document), never on its
neighbours, so scoring contiguous slices on different replicas yields the same scores. The merge
re-applies the server's own order (score descending, lower original index first) to the union. With
``top_n``, each part is asked for its own best ``top_n`` only: the global best ``top_n`` are always among
the union of the parts' best ``top_n``, and ties stay ordered because slices are contiguous.
"""

from __future__ import annotations

import json
import math
from typing import Any

from rerankd.gateway.tokens import usage_count
from rerankd.protocol import RerankRequest

__all__ = ["SplitPlan", "merge_rerank_parts", "plan_split"]


class SplitPlan:
    """The slices ``[start, end)`` of the documents, one per part, and the body each part sends."""

    def __init__(self, request: RerankRequest, parts: int) -> None:
        n = len(request.documents)
        parts = max(1, min(parts, n))
        size = math.ceil(n / parts)
        self.request = request
        self.slices = [(start, min(start + size, n)) for start in range(0, n, size)]

    def bodies(self) -> list[bytes]:
        """Each part's JSON body: same options, its slice of documents, texts not echoed back."""
        base = self.request.model_dump(mode="json", exclude_none=True)
        base["return_documents"] = False  # the gateway already has every text; save the bandwidth
        bodies = []
        for start, end in self.slices:
            part = dict(base)
            part["documents"] = base["documents"][start:end]
            if self.request.top_n is not None:
                part["top_n"] = min(self.request.top_n, end - start)
            bodies.append(json.dumps(part, ensure_ascii=False).encode())
        return bodies


def plan_split(request: RerankRequest, threshold: int, replicas: int) -> SplitPlan | None:
    """A plan when the request has more than ``threshold`` documents and more than one replica can help."""
    n = len(request.documents)
    if n <= threshold or replicas < 2:
        return None
    return SplitPlan(request, min(replicas, math.ceil(n / threshold)))


def merge_rerank_parts(plan: SplitPlan, answers: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    """One response as a single replica would have given it: global indices, order, ``top_n``, usage.

    A part's implausible token count raises :class:`~rerankd.errors.UpstreamMalformedError`; a part
    without ``results`` or with non-numeric fields raises KeyError/TypeError/ValueError (the caller's 502).
    """
    request = plan.request
    merged: list[tuple[float, int, int | None]] = []
    prompt_tokens = total_tokens = 0
    chunked = request.max_chunks_per_doc is not None  # each result then names its best chunk
    for (start, _end), answer in zip(plan.slices, answers, strict=True):
        for item in answer["results"]:
            chunk = int(item["chunk_index"]) if chunked else None
            merged.append((float(item["relevance_score"]), start + int(item["index"]), chunk))
        usage = answer.get("usage")
        prompt_tokens += usage_count(usage, "prompt_tokens")
        total_tokens += usage_count(usage, "total_tokens")
    merged.sort(key=lambda item: (-item[0], item[1]))
    if request.top_n is not None:
        merged = merged[: request.top_n]
    results = []
    for score, index, chunk in merged:
        result: dict[str, Any] = {"index": index, "relevance_score": score}
        if request.return_documents:
            result["document"] = request.returned_document(index)  # as sent: a string as {"text": …}, an object whole
        if chunk is not None:
            result["chunk_index"] = chunk
        results.append(result)
    return {"id": request_id, "model": answers[0].get("model", request.model or ""), "results": results,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": total_tokens}}
