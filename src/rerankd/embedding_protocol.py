"""The embedding wire shapes rerankd speaks, and how each dialect becomes one :class:`EmbedTask`.

Dialects: OpenAI ``POST /v1/embeddings`` (also vLLM's and Jina's: ``task``, ``input_type``), TEI ``POST /embed``
and Cohere's ``POST /v2/embed`` and ``POST /v1/embed`` (v1: LangChain's ``CohereEmbeddings``, the SDK's v1
``Client.embed``; v2's fields, answered as ``embeddings_floats`` when no ``embedding_types`` are asked).
Handlers take one of these models, call :meth:`to_task`, hand the task to the engine and build the dialect's
answer with the functions at the bottom. Answers are built as plain JSON (not validated pydantic
models): 1000 vectors of 1024 floats would otherwise be a million validated floats.

Which inputs are queries: a query gets the model card's ``Instruct: {instruction}\\nQuery:`` before it, a
document nothing. ``input_type`` (Cohere's names, or ``query`` / ``document``), Jina's ``task`` or an explicit
``instruction`` make the inputs queries; without any of them, OpenAI's and TEI's inputs are documents (as the
model card embeds them, and as vLLM and TEI do). See docs/embeddings.md.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rerankd.engine.embedding import DEFAULT_EMBED_INSTRUCTION

__all__ = [
    "COHERE_EMBEDDING_TYPES",
    "COHERE_V1_EMBEDDING_TYPES",
    "INPUT_TYPE_INSTRUCTIONS",
    "JINA_TASKS",
    "CohereEmbedRequest",
    "CohereV1EmbedRequest",
    "EmbedTask",
    "OpenAIEmbeddingRequest",
    "TEIEmbedRequest",
    "cohere_answer",
    "cohere_v1_answer",
    "openai_answer",
]

# Cohere's input types (and plain query/document): None = a document, else the instruction a query gets.
# The instructions are the Qwen3-Embedding evaluation's wording for each kind of task.
INPUT_TYPE_INSTRUCTIONS: dict[str, str | None] = {
    "query": DEFAULT_EMBED_INSTRUCTION,
    "search_query": DEFAULT_EMBED_INSTRUCTION,
    "document": None,
    "passage": None,
    "search_document": None,
    "classification": "Classify the given text",
    "clustering": "Identify the topic or theme of the given text",
}
# Jina's `task` values, the same way.
JINA_TASKS: dict[str, str | None] = {
    "retrieval.query": DEFAULT_EMBED_INSTRUCTION,
    "retrieval.passage": None,
    "text-matching": "Retrieve semantically similar text",
    "classification": "Classify the given text",
    "separation": "Identify the topic or theme of the given text",
    "code.query": "Given a question, retrieve code snippets that answer it",
    "code.passage": None,
}
COHERE_EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary", "base64")
COHERE_V1_EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary")  # Cohere v1 has no base64

Inputs = str | list[str] | list[int] | list[list[int]]
EmbeddingKind = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]
V1EmbeddingKind = Literal["float", "int8", "uint8", "binary", "ubinary"]
_MAX_INSTRUCTION = 100_000


@dataclass(frozen=True)
class EmbedTask:
    """What every dialect becomes."""

    inputs: list[str | list[int]]
    is_query: bool = False
    instruction: str | None = None
    prompt_name: str | None = None
    dimensions: int | None = None
    dimensions_field: str = "dimensions"
    normalize: bool = True
    truncate: bool = True
    truncation_direction: Literal["right", "left"] = "right"


def _float_only() -> list[EmbeddingKind]:
    return ["float"]


def _as_list(value: Inputs, field: str) -> list[str | list[int]]:
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(v, int) for v in value):
        return [list(value)]  # type: ignore[arg-type]  # one input's token ids
    return list(value)  # type: ignore[arg-type]


def _query_side(input_type: str | None, task: str | None, instruction: str | None) -> tuple[bool, str | None]:
    """(is_query, instruction) from the dialect's ``input_type`` / ``task`` / ``instruction``."""
    if input_type is not None:
        if input_type not in INPUT_TYPE_INSTRUCTIONS:
            raise ValueError(f"`input_type` must be one of {', '.join(INPUT_TYPE_INSTRUCTIONS)}")
        default = INPUT_TYPE_INSTRUCTIONS[input_type]
        return (default is not None or instruction is not None), instruction or default
    if task is not None:
        if task not in JINA_TASKS:
            raise ValueError(f"`task` must be one of {', '.join(JINA_TASKS)}")
        default = JINA_TASKS[task]
        return (default is not None or instruction is not None), instruction or default
    return instruction is not None, instruction


def _no_empty_list(value: Any, field: str) -> None:
    if isinstance(value, list) and not value:
        raise ValueError(f"`{field}` is empty: send at least one input")
    if isinstance(value, list) and any(isinstance(v, list) and not v for v in value):
        raise ValueError(f"`{field}` holds an empty token list")


# ---------------------------------------------------------------- OpenAI (and vLLM, Jina)


class OpenAIEmbeddingRequest(BaseModel):
    """``POST /v1/embeddings``: OpenAI's body, with vLLM's and Jina's extra fields."""

    model_config = ConfigDict(extra="ignore")

    input: Inputs = Field(..., description="A text, a list of texts, one token-id list, or a list of them.")
    model: str | None = Field(None, description="Served model name; optional when one model is served.")
    dimensions: int | None = Field(None, description="Matryoshka: the first N components, re-normalised.")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each vector as little-endian float32 bytes.")
    user: str | None = Field(None, description="Accepted and ignored (OpenAI's end-user id).")
    input_type: str | None = Field(
        None, description="query / document, or Cohere's search_query / search_document / classification / "
                          "clustering: queries get the instruction.")
    task: str | None = Field(None, description="Jina's task: retrieval.query, retrieval.passage, text-matching, ...")
    instruction: str | None = Field(
        None, max_length=_MAX_INSTRUCTION, description="Embed the inputs as queries with this instruction.")
    truncate: bool = Field(True, description="false: answer 413 for an input longer than the model length.")

    @model_validator(mode="after")
    def _check(self) -> OpenAIEmbeddingRequest:
        _no_empty_list(self.input, "input")
        _query_side(self.input_type, self.task, self.instruction)
        return self

    def to_task(self) -> EmbedTask:
        is_query, instruction = _query_side(self.input_type, self.task, self.instruction)
        return EmbedTask(_as_list(self.input, "input"), is_query, instruction, dimensions=self.dimensions,
                         truncate=self.truncate)


def openai_answer(embeddings: list[Any], model: str, prompt_tokens: int) -> dict[str, Any]:
    """OpenAI's list of ``{"object": "embedding", "index", "embedding"}`` with usage."""
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(embeddings)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


# ---------------------------------------------------------------- TEI


class TEIEmbedRequest(BaseModel):
    """Text Embeddings Inference's ``POST /embed`` body."""

    model_config = ConfigDict(extra="ignore")

    inputs: Inputs
    normalize: bool = True
    truncate: bool | None = Field(None, description="false: answer 413 instead of cutting a too-long input.")
    truncation_direction: Literal["Right", "Left", "right", "left"] = "Right"
    prompt_name: str | None = Field(None, description="One of the model's named prompts (query, document, ...).")
    dimensions: int | None = None

    @model_validator(mode="after")
    def _check(self) -> TEIEmbedRequest:
        _no_empty_list(self.inputs, "inputs")
        return self

    def to_task(self) -> EmbedTask:
        direction: Literal["right", "left"] = "left" if self.truncation_direction.lower() == "left" else "right"
        return EmbedTask(_as_list(self.inputs, "inputs"), prompt_name=self.prompt_name, dimensions=self.dimensions,
                         normalize=self.normalize, truncate=self.truncate is not False,
                         truncation_direction=direction)


# ---------------------------------------------------------------- Cohere v2


class CohereEmbedRequest(BaseModel):
    """Cohere's ``POST /v2/embed`` body (text inputs)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    texts: list[str] = Field(..., min_length=1)
    input_type: Literal["search_document", "search_query", "classification", "clustering"] = "search_document"
    embedding_types: list[EmbeddingKind] = Field(default_factory=_float_only, min_length=1)
    output_dimension: int | None = None
    truncate: Literal["NONE", "START", "END"] = "END"
    instruction: str | None = Field(None, max_length=_MAX_INSTRUCTION)

    def to_task(self) -> EmbedTask:
        is_query, instruction = _query_side(self.input_type, None, self.instruction)
        direction: Literal["right", "left"] = "left" if self.truncate == "START" else "right"
        return EmbedTask(list(self.texts), is_query, instruction, dimensions=self.output_dimension,
                         dimensions_field="output_dimension", truncate=self.truncate != "NONE",
                         truncation_direction=direction)


def cohere_answer(by_type: dict[str, Any], texts: list[str], prompt_tokens: int) -> dict[str, Any]:
    """Cohere v2's ``embeddings_by_type`` answer, with the input tokens billed in ``meta``."""
    return {
        "id": str(uuid.uuid4()),
        "embeddings": by_type,
        "texts": texts,
        "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": prompt_tokens}},
        "response_type": "embeddings_by_type",
    }


# ---------------------------------------------------------------- Cohere v1


class CohereV1EmbedRequest(BaseModel):
    """Cohere's ``POST /v1/embed`` body: what the SDK's v1 ``Client.embed`` (and LangChain's ``CohereEmbeddings``)
    sends: ``texts``, ``model``, ``input_type``, ``embedding_types``, ``truncate`` (and ``images``, refused: rerankd
    embeds text). Its task is v2's (:meth:`CohereEmbedRequest.to_task`): one input_type→instruction mapping."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    texts: list[str] = Field(..., min_length=1)
    images: list[str] | None = Field(None, description="Refused unless empty: rerankd embeds text only.")
    input_type: Literal["search_document", "search_query", "classification", "clustering", "image"] | None = None
    embedding_types: list[V1EmbeddingKind] | None = Field(
        None, min_length=1, description="Absent: the answer is `embeddings_floats`, a bare list of float vectors.")
    # null is what the SDK sends for LangChain's default `truncate=None`: Cohere's default, END.
    truncate: Literal["NONE", "START", "END"] | None = "END"
    instruction: str | None = Field(None, max_length=_MAX_INSTRUCTION)

    @model_validator(mode="after")
    def _check(self) -> CohereV1EmbedRequest:
        if self.images:
            raise ValueError("`images` are not supported: rerankd embeds text; send `texts`")
        if self.input_type == "image":
            raise ValueError("`input_type` \"image\" is not supported: rerankd embeds text; use search_document, "
                             "search_query, classification or clustering")
        return self

    def as_v2(self) -> CohereEmbedRequest:
        """The same request in v2's shape (v1's ``input_type`` defaults to a document, as v2's does)."""
        input_type = self.input_type if self.input_type not in (None, "image") else "search_document"
        return CohereEmbedRequest(model=self.model, texts=self.texts, input_type=input_type,  # type: ignore[arg-type]
                                  embedding_types=list(self.embedding_types or ["float"]),
                                  truncate=self.truncate or "END", instruction=self.instruction)

    def to_task(self) -> EmbedTask:
        return self.as_v2().to_task()


def cohere_v1_answer(by_type: dict[str, Any], texts: list[str], prompt_tokens: int, *,
                     floats: bool) -> dict[str, Any]:
    """Cohere v1's answer: ``embeddings_floats`` (``embeddings`` the float vectors) when no ``embedding_types``
    were asked (``floats``), else ``embeddings_by_type`` as v2's; ``meta.api_version`` is 1."""
    answer = cohere_answer(by_type, texts, prompt_tokens)
    answer["meta"]["api_version"] = {"version": "1"}
    if floats:
        answer["embeddings"] = by_type["float"]
        answer["response_type"] = "embeddings_floats"
    return answer
