"""Every wire shape rerankd speaks, and the mapping of each dialect to one internal form.

Dialects: Jina / Cohere / vLLM rerank (``/v1/rerank``, ``/v2/rerank``, ``/rerank``), TEI
(``/rerank`` with ``texts``) and vLLM score (``/v1/score``). Handlers never parse raw JSON: they take
one of these models, turn it into :class:`RerankTask` objects, and build the dialect's answer from the
scores with the functions at the bottom. The gateway uses the same models, so the fleet and a single
server validate identically.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

__all__ = [
    "TENANT_HEADER",
    "DocumentObject",
    "ErrorBody",
    "LongDocumentFields",
    "ModelCard",
    "ModelList",
    "RerankAnyRequest",
    "RerankRequest",
    "RerankResponse",
    "RerankResult",
    "RerankTask",
    "ScoreData",
    "ScoreRequest",
    "ScoreResponse",
    "TEIRankItem",
    "TEIRerankRequest",
    "Usage",
    "build_rerank_response",
    "build_score_response",
    "build_tei_response",
    "new_request_id",
    "prompt_tokens_cap",
    "rank_order",
    "sigmoid",
]

# Who asks, as the gateway (which holds the replica's --api-key) names the key: requests of one tenant share a
# replica's batcher turns. A replica honours it only behind --api-key; without one, anyone could name any tenant.
TENANT_HEADER = "X-Rerankd-Tenant"

MaxTokens = Annotated[int, Field(ge=1, le=1_000_000)]
# vLLM's truncate_prompt_tokens: a prompt length, or -1 for the model's own (vLLM's Field(ge=-1)).
PromptTokens = Annotated[int, Field(ge=-1, le=1_000_000)]


def new_request_id(prefix: str = "rerank") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def sigmoid(x: float) -> float:
    """Numerically safe logistic function: softmax([no, yes])[yes] == sigmoid(yes - no)."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


# ---------------------------------------------------------------- Jina / Cohere / vLLM rerank


class DocumentObject(BaseModel):
    """A document given as an object (Jina, Cohere v1): only ``text`` is scored."""

    model_config = ConfigDict(extra="allow")
    text: str


# ---------------------------------------------------------------- long documents: chunking, whole-prompt cap


class LongDocumentFields(BaseModel):
    """The rerank routes' fields for documents longer than their budget (see docs/api.md, Long documents).

    Without them a long document is cut (today's answer); with ``max_chunks_per_doc`` it is scored in chunks
    and its score is the best chunk's.
    """

    max_chunks_per_doc: Annotated[int, Field(ge=1, le=1_000_000)] | None = Field(
        None, description="Cohere v1: score a long document in up to this many chunks of its token budget "
                          "(`max_tokens_per_doc`, else what the model length leaves after the query); its score "
                          "is the best chunk's, named by `chunk_index`. Absent: cut the document instead.")
    chunk_overlap_tokens: Annotated[int, Field(ge=0, le=1_000_000)] | None = Field(
        None, description="Tokens each chunk repeats from the end of the one before (default 0, as Cohere); "
                          "must be smaller than the chunk length. Needs `max_chunks_per_doc`.")
    truncate_prompt_tokens: PromptTokens | None = Field(
        None, description="vLLM: cut each whole prompt (template, instruction, query, document) to this many "
                          "tokens by cutting the document; -1 = the model length.")

    @model_validator(mode="after")
    def _overlap_needs_chunks(self) -> LongDocumentFields:
        if self.chunk_overlap_tokens is not None and self.max_chunks_per_doc is None:
            raise ValueError("`chunk_overlap_tokens` applies to chunks: send `max_chunks_per_doc` with it")
        return self

    def long_document_options(self) -> dict[str, Any]:
        """These fields as :class:`RerankTask` keyword arguments."""
        return {"max_prompt_tokens": prompt_tokens_cap(self.truncate_prompt_tokens),
                "max_chunks_per_doc": self.max_chunks_per_doc,
                "chunk_overlap_tokens": self.chunk_overlap_tokens or 0}


def prompt_tokens_cap(truncate_prompt_tokens: int | None) -> int | None:
    """vLLM's ``truncate_prompt_tokens`` as a prompt cap: -1 means the model length, i.e. no cap of its own."""
    return None if truncate_prompt_tokens is None or truncate_prompt_tokens == -1 else truncate_prompt_tokens


class RerankRequest(LongDocumentFields):
    """``POST /v1/rerank``, ``/v2/rerank``, ``/rerank``. Only ``query`` and ``documents`` are required."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="Served model name; optional when one model is served.")
    query: str = Field(..., min_length=1, description="The search query.")
    documents: list[str | DocumentObject] = Field(
        ..., min_length=1, description="Candidate documents: strings or objects with a `text` field."
    )
    top_n: int | None = Field(None, ge=1, description="Return only the best N results (default: all).")
    return_documents: bool = Field(True, description="Include each document's text in the results.")
    instruction: str | None = Field(
        None, max_length=100_000, description="Task instruction (Qwen3 is instruction-aware)."
    )
    max_tokens_per_doc: MaxTokens | None = Field(None, description="Cut each document to this many tokens.")
    raw_scores: bool = Field(False, description="Return logit_yes - logit_no instead of a probability.")

    def document_texts(self) -> list[str]:
        return [d if isinstance(d, str) else d.text for d in self.documents]

    def to_task(self) -> RerankTask:
        return RerankTask(self.query, self.document_texts(), self.instruction, self.max_tokens_per_doc,
                          **self.long_document_options())


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: DocumentObject | None = None
    chunk_index: int | None = Field(None, description="With `max_chunks_per_doc`: the chunk whose score this is.")


class Usage(BaseModel):
    prompt_tokens: int = 0
    total_tokens: int = 0


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]
    usage: Usage


# ---------------------------------------------------------------- TEI


class TEIRerankRequest(BaseModel):
    """Text Embeddings Inference's ``/rerank`` body."""

    model_config = ConfigDict(extra="ignore")

    query: str = Field(..., min_length=1)
    texts: list[str] = Field(..., min_length=1)
    raw_scores: bool = False
    return_text: bool = False
    truncate: bool | None = Field(
        None, description="false: answer 413 instead of cutting a document that is too long."
    )
    truncation_direction: Literal["Right", "Left", "right", "left"] = Field(
        "Right", description="Which end of a too-long text is cut: Right its end, Left its start; the query is "
                             "never cut. TEI spells them Right/Left; lower case is accepted too.")
    instruction: str | None = Field(None, max_length=100_000)

    def to_task(self) -> RerankTask:
        direction: Literal["right", "left"] = "left" if self.truncation_direction in ("Left", "left") else "right"
        return RerankTask(self.query, list(self.texts), self.instruction, None, truncation_direction=direction)


def _rerank_dialect(body: Any) -> str:
    """``/rerank`` serves two dialects: a body with ``texts`` and no ``documents`` is TEI's."""
    if isinstance(body, dict):
        return "TEI" if "texts" in body and "documents" not in body else "Rerank"
    return "TEI" if isinstance(body, TEIRerankRequest) else "Rerank"


# One dialect per body, so a TEI body's errors name its own fields (not a missing `documents`). The tags are
# capitalised as model names are: the error message leaves such a location part out (rerankd.http.errors).
RerankAnyRequest = Annotated[
    Annotated[RerankRequest, Tag("Rerank")] | Annotated[TEIRerankRequest, Tag("TEI")],
    Discriminator(_rerank_dialect),
]


class TEIRankItem(BaseModel):
    index: int
    score: float
    text: str | None = None


# ---------------------------------------------------------------- vLLM score


class ScoreRequest(BaseModel):
    """vLLM's ``/v1/score``: ``text_1`` (queries) against ``text_2`` (documents).

    One query against N documents, or N queries paired one-to-one with N documents. ``queries`` and
    ``documents`` are accepted as synonyms, as newer vLLM releases name them.
    """

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    text_1: str | list[str] | None = None
    text_2: str | list[str] | None = None
    queries: str | list[str] | None = None
    documents: str | list[str] | None = None
    instruction: str | None = Field(None, max_length=100_000)
    truncate_prompt_tokens: PromptTokens | None = Field(
        None, description="Cut each whole prompt to this many tokens by cutting the document (never the query); "
                          "-1 = the model length.")

    @model_validator(mode="after")
    def _check_sides(self) -> ScoreRequest:
        left = self.text_1 if self.text_1 is not None else self.queries
        right = self.text_2 if self.text_2 is not None else self.documents
        if left is None or right is None:
            raise ValueError("give `text_1` and `text_2` (or `queries` and `documents`)")
        left_list = [left] if isinstance(left, str) else left
        right_list = [right] if isinstance(right, str) else right
        if not left_list or not right_list:
            raise ValueError("`text_1` and `text_2` must not be empty")
        if any(not q for q in left_list):
            raise ValueError("`text_1` holds an empty query")
        if len(left_list) != 1 and len(left_list) != len(right_list):
            raise ValueError(
                f"`text_1` has {len(left_list)} items and `text_2` has {len(right_list)}: give one query, "
                "or as many queries as documents"
            )
        self.text_1, self.text_2 = left_list, right_list
        return self

    def pairs(self) -> list[tuple[str, str]]:
        assert isinstance(self.text_1, list) and isinstance(self.text_2, list)
        if len(self.text_1) == 1:
            return [(self.text_1[0], d) for d in self.text_2]
        return list(zip(self.text_1, self.text_2, strict=True))

    def to_tasks(self) -> tuple[list[RerankTask], list[tuple[int, int]]]:
        """One task per distinct query, and where each pair's score lands: (task index, doc index)."""
        tasks: dict[str, RerankTask] = {}
        where: list[tuple[int, int]] = []
        for query, doc in self.pairs():
            if query not in tasks:
                tasks[query] = RerankTask(query, [], self.instruction,
                                          max_prompt_tokens=prompt_tokens_cap(self.truncate_prompt_tokens))
            task = tasks[query]
            where.append((list(tasks).index(query), len(task.documents)))
            task.documents.append(doc)
        return list(tasks.values()), where


class ScoreData(BaseModel):
    index: int
    object: Literal["score"] = "score"
    score: float


class ScoreResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ScoreData]
    usage: Usage


# ---------------------------------------------------------------- models, errors


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "rerankd"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int
    field: str | None = None


class ErrorBody(BaseModel):
    """Every error answer: ``{"error": {"message", "type", "code", "field"?}}``."""

    error: ErrorDetail


# ---------------------------------------------------------------- internal form and answers


@dataclass
class RerankTask:
    """What every dialect becomes: one query, its documents, and how to cut them."""

    query: str
    documents: list[str]
    instruction: str | None = None
    max_tokens_per_doc: int | None = None
    # Long documents (LongDocumentFields, TEI's truncation_direction): which end is cut, a whole-prompt cap,
    # chunking instead of cutting.
    truncation_direction: Literal["right", "left"] = "right"
    max_prompt_tokens: int | None = None
    max_chunks_per_doc: int | None = None
    chunk_overlap_tokens: int = 0


def rank_order(scores: Sequence[float], top_n: int | None = None) -> list[int]:
    """Indices by score descending, ties broken by the lower index; cut to ``top_n``."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return order if top_n is None else order[:top_n]


def build_rerank_response(
    request: RerankRequest, raw: Sequence[float], prompt_tokens: int, model: str, request_id: str,
    chunk_index: Sequence[int] | None = None,
) -> RerankResponse:
    """The rerank answer; ``chunk_index`` (chunked requests only) names each document's best chunk."""
    scores = list(raw) if request.raw_scores else [sigmoid(x) for x in raw]
    texts = request.document_texts()
    results = [
        RerankResult(
            index=i,
            relevance_score=scores[i],
            document=DocumentObject(text=texts[i]) if request.return_documents else None,
            chunk_index=None if chunk_index is None else chunk_index[i],
        )
        for i in rank_order(scores, request.top_n)
    ]
    return RerankResponse(
        id=request_id, model=model, results=results,
        usage=Usage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
    )


def build_tei_response(request: TEIRerankRequest, raw: Sequence[float]) -> list[TEIRankItem]:
    scores = list(raw) if request.raw_scores else [sigmoid(x) for x in raw]
    return [
        TEIRankItem(index=i, score=scores[i], text=request.texts[i] if request.return_text else None)
        for i in rank_order(scores)
    ]


def build_score_response(
    raw: Sequence[float], prompt_tokens: int, model: str, request_id: str
) -> ScoreResponse:
    return ScoreResponse(
        id=request_id, created=int(time.time()), model=model,
        data=[ScoreData(index=i, score=sigmoid(x)) for i, x in enumerate(raw)],
        usage=Usage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
    )
