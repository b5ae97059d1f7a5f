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
    "DEFAULT_RANK_FIELDS",
    "TENANT_HEADER",
    "AnyRerankRequest",
    "DocumentObject",
    "ErrorBody",
    "FieldError",
    "LongDocumentFields",
    "ModelCard",
    "ModelList",
    "RerankRequest",
    "RerankResponse",
    "RerankResult",
    "RerankTask",
    "ScoreData",
    "ScoreRequest",
    "ScoreResponse",
    "TEIErrorBody",
    "TEIRankItem",
    "TEIRerankRequest",
    "Usage",
    "build_rerank_response",
    "build_score_response",
    "build_tei_response",
    "error_dialect_of",
    "is_tei_body",
    "new_request_id",
    "prompt_tokens_cap",
    "rank_order",
    "ranked_text",
    "sigmoid",
]

# Who asks, as the gateway (which holds the replica's --api-key) names the key: requests of one tenant share a
# replica's batcher turns. A replica honours it only behind --api-key; without one, anyone could name any tenant.
TENANT_HEADER = "X-Rerankd-Tenant"

MaxTokens = Annotated[int, Field(ge=1, le=1_000_000)]
# vLLM's truncate_prompt_tokens: a prompt length, or -1 for the model's own (vLLM's Field(ge=-1)).
PromptTokens = Annotated[int, Field(ge=-1, le=1_000_000)]
# vLLM's request `priority`: lower is served earlier, 0 by default. A JSON integer in the int32 range.
Priority = Annotated[int, Field(
    strict=True, ge=-(2**31), le=2**31 - 1,
    description="Scheduling priority (vLLM's field): lower is served earlier; an integer, default 0.")]
DEFAULT_RANK_FIELDS = ("text",)


class FieldError(ValueError):
    """A validation failure that names its own field (``documents.2.title``, as pydantic locates fields): the
    HTTP error handler puts ``field`` in the error body and the message as it is, where a plain ``ValueError``
    raised by a model validator would be located at the whole body."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


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
    """A document given as an object (Jina, Cohere v1, Pinecone): any fields. The request's ``rank_fields``
    (default ``["text"]``) name the string fields that are scored; the object comes back whole."""

    model_config = ConfigDict(extra="allow")
    text: str | None = Field(None, description="The text scored when `rank_fields` is not given.")

    def fields(self) -> dict[str, Any]:
        """The fields as the client sent them (a ``text`` it did not send is not added)."""
        return self.model_dump(mode="json", exclude_unset=True)


def ranked_text(fields: dict[str, Any], rank_fields: Sequence[str]) -> str:
    """The text scored for a document object: one ranked field's value as it is (so ``{"text": t}`` scores
    exactly ``t``); several as ``name: value`` lines in ``rank_fields`` order, the YAML-like form Cohere
    advises for semi-structured documents. The fields must be strings (the request validates that)."""
    if len(rank_fields) == 1:
        return str(fields[rank_fields[0]])
    return "\n".join(f"{name}: {fields[name]}" for name in rank_fields)


def _kind(value: Any) -> str:
    names = {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number",
             type(None): "null"}
    return names.get(type(value), type(value).__name__)


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
    """``POST /v1/rerank``, ``/v2/rerank``, ``/rerank``. Only ``query`` and ``documents`` are required.

    ``documents`` are strings or objects; ``rank_fields`` (Cohere v1) names which string fields of an object
    are scored, in which order (:func:`ranked_text`). Strings are scored as they are, whatever ``rank_fields``
    says (Cohere v2 sends semi-structured documents as YAML strings: plain text here).
    """

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, description="Served model name; optional when one model is served.")
    query: str = Field(..., min_length=1, description="The search query.")
    documents: list[str | DocumentObject] = Field(
        ..., min_length=1,
        description="Candidate documents: strings, or objects whose `rank_fields` (default `text`) are scored.")
    rank_fields: list[Annotated[str, Field(min_length=1, max_length=256)]] | None = Field(
        None, min_length=1, max_length=64,
        description="Fields of object documents to score, in order (Cohere v1; default [\"text\"]).")
    top_n: int | None = Field(None, ge=1, description="Return only the best N results (default: all).")
    return_documents: bool = Field(True, description="Include each document's text in the results.")
    instruction: str | None = Field(
        None, max_length=100_000, description="Task instruction (Qwen3 is instruction-aware)."
    )
    max_tokens_per_doc: MaxTokens | None = Field(None, description="Cut each document to this many tokens.")
    raw_scores: bool = Field(False, description="Return logit_yes - logit_no instead of a probability.")
    priority: Priority = 0

    @model_validator(mode="after")
    def _check_rank_fields(self) -> RerankRequest:
        """Every object document has each ranked field, as a string: a 422 naming the document and field."""
        names = self.rank_fields or DEFAULT_RANK_FIELDS
        for i, doc in enumerate(self.documents):
            if isinstance(doc, str):
                continue
            fields = doc.fields()
            for name in names:
                if name not in fields:
                    advice = ("it is named in `rank_fields`" if self.rank_fields else
                              "give each document object a `text` field, or name the fields to rank in `rank_fields`")
                    raise FieldError(f"`documents[{i}]` has no field `{name}`: {advice}", f"documents.{i}.{name}")
                if not isinstance(fields[name], str):
                    raise FieldError(f"`documents[{i}].{name}` must be a string to be ranked, got "
                                     f"{_kind(fields[name])}", f"documents.{i}.{name}")
        return self

    def document_texts(self) -> list[str]:
        """The text scored for each document: a string as it is, an object's ranked fields (:func:`ranked_text`)."""
        names = self.rank_fields or DEFAULT_RANK_FIELDS
        return [d if isinstance(d, str) else ranked_text(d.fields(), names) for d in self.documents]

    def returned_document(self, index: int) -> dict[str, Any]:
        """``document`` of a result: ``{"text": …}`` for a string, an object whole, as it was sent."""
        doc = self.documents[index]
        return {"text": doc} if isinstance(doc, str) else doc.fields()

    def to_task(self) -> RerankTask:
        return RerankTask(self.query, self.document_texts(), self.instruction, self.max_tokens_per_doc,
                          **self.long_document_options())


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, Any] | None = Field(
        None, description="The document as sent (`{\"text\": …}` for a string); only with `return_documents`.")
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
    priority: Priority = 0

    def to_task(self) -> RerankTask:
        direction: Literal["right", "left"] = "left" if self.truncation_direction in ("Left", "left") else "right"
        return RerankTask(self.query, list(self.texts), self.instruction, None, truncation_direction=direction)


class TEIRankItem(BaseModel):
    index: int
    score: float
    text: str | None = None


def is_tei_body(body: Any) -> bool:
    """Whether a ``POST /rerank`` body is TEI's (``texts``, no ``documents``): a parsed object, a model, or the
    raw bytes of a body refused before it was parsed (a key ``"texts"`` and no ``"documents"``)."""
    if isinstance(body, TEIRerankRequest):
        return True
    if isinstance(body, dict):
        return "texts" in body and "documents" not in body
    if isinstance(body, bytes | bytearray):
        return b'"texts"' in body and b'"documents"' not in body
    return False


def error_dialect_of(path: str, body: Any) -> Literal["tei", "rerankd"]:
    """The error shape a request to ``path`` is answered in: TEI's for a TEI body on ``/rerank`` (TEI clients
    read ``{"error", "error_type"}``), rerankd's for everything else. The server and the gateway both ask."""
    return "tei" if path == "/rerank" and is_tei_body(body) else "rerankd"


def _rerank_dialect(body: Any) -> str:
    return "TEIRerankRequest" if is_tei_body(body) else "RerankRequest"


AnyRerankRequest = Annotated[
    Annotated[RerankRequest, Tag("RerankRequest")] | Annotated[TEIRerankRequest, Tag("TEIRerankRequest")],
    Discriminator(_rerank_dialect),
]
"""``POST /rerank``'s body: TEI's when it has ``texts`` and no ``documents``, else the rerank shape. Validated
as that one shape only, so an error names the fields of the shape the client sent (``texts``, not ``documents``).
The tags are the model names, which the error messages leave out of a field's location."""


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
    priority: Priority = 0

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
    """Every error answer: ``{"error": {"message", "type", "code", "field"?}, "detail"}``; ``detail`` repeats the
    message for clients that read Jina's top-level ``detail``."""

    error: ErrorDetail
    detail: str


class TEIErrorBody(BaseModel):
    """An error answer to a TEI-shaped request, as TEI writes it: ``{"error": "…", "error_type": "Validation"}``."""

    error: str
    error_type: Literal["Unhealthy", "Backend", "Overloaded", "Validation", "Tokenizer", "Empty"]


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
    results = [
        RerankResult(
            index=i,
            relevance_score=scores[i],
            document=request.returned_document(i) if request.return_documents else None,
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
