"""The inference server's embedding routes: OpenAI ``/v1/embeddings``, TEI ``/embed``, Cohere ``/v2/embed`` and
``/v1/embed``.

Why a router of its own: the rerank routes' module (:mod:`rerankd.server.app`) stays about scoring; this one
only maps the embedding dialects (:mod:`rerankd.embedding_protocol`) to the engine's
:meth:`~rerankd.engine.engine.RerankEngine.embed_all` and back. Bodies are admitted exactly as the scoring
routes' are (:func:`~rerankd.server.admission.admission_route`: size bounds before validation, with room for
token-id inputs), and the same ``--max-documents``, ``--max-request-tokens`` and queue limits apply.

A server whose model is a reranker answers these routes with a 400 naming the routes it does serve (and the
rerank routes of an embedding server do the same, in :mod:`rerankd.server.app`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rerankd.embedding_protocol import (
    CohereEmbedRequest,
    CohereV1EmbedRequest,
    EmbedTask,
    OpenAIEmbeddingRequest,
    TEIEmbedRequest,
    cohere_answer,
    cohere_v1_answer,
    openai_answer,
)
from rerankd.engine.embedding import check_dimensions, quantize, to_base64
from rerankd.engine.engine import EmbedOutcome, RerankEngine
from rerankd.errors import PayloadTooLargeError, TaskMismatchError, UnprocessableError
from rerankd.http.disconnect import unless_disconnected
from rerankd.observability.metrics import ServerMetrics
from rerankd.observability.tasks import EMBED_ROUTES

__all__ = ["EMBED_ROUTES", "RERANK_ROUTES", "embedding_router", "require_task"]

RERANK_ROUTES = ("/v1/rerank", "/v2/rerank", "/rerank", "/v1/score")  # the ones a wrong-task 400 names


def require_task(engine: RerankEngine, task: str) -> None:
    """Refuse (400) a request for the task this server's model does not serve, naming the routes it does."""
    if engine.task == task:
        return
    if engine.task == "embed":
        raise TaskMismatchError(
            "this server serves an embedding model, not a reranker; use "
            f"{', '.join(sorted(EMBED_ROUTES))}, or serve a reranker (--task rerank)")
    raise TaskMismatchError(
        f"this server serves a reranker, not an embedding model; use {', '.join(RERANK_ROUTES)}, or serve an "
        "embedding model (rerankd serve --model Qwen/Qwen3-Embedding-0.6B, or --task embed)")


class _Json(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":"), allow_nan=False).encode()


def embedding_router(
    route_class: type[Any], *, ready_engine: Callable[[], RerankEngine], check_model: Callable[[str | None], None],
    check_count: Callable[[int, str], None], tenant_of: Callable[[Request], str | None], model_name: str,
    metrics: ServerMetrics,
) -> APIRouter:
    """The embedding routes, reading the app's engine and checks through the callables given."""
    router = APIRouter(route_class=route_class)

    async def run(request: Request, task: EmbedTask, field: str) -> tuple[EmbedOutcome, RerankEngine]:
        engine = ready_engine()
        require_task(engine, "embed")
        check_count(len(task.inputs), field)
        assert engine.dimensions is not None
        check_dimensions(task.dimensions, engine.dimensions, task.dimensions_field)
        prompt = None
        if task.prompt_name is not None:
            if task.prompt_name not in engine.prompts:
                raise UnprocessableError(
                    f"`prompt_name` {task.prompt_name!r} is not one of this model's prompts: "
                    f"{', '.join(sorted(engine.prompts))}", field="prompt_name")
            prompt = engine.prompts[task.prompt_name]
        try:
            outcome = await unless_disconnected(request, engine.embed_all(
                task.inputs, is_query=task.is_query, instruction=task.instruction, prompt=prompt,
                dimensions=task.dimensions, normalize=task.normalize, truncate=task.truncate,
                truncation_direction=task.truncation_direction, tenant=tenant_of(request)))
        except PayloadTooLargeError as exc:
            if exc.field and exc.field.startswith("input["):  # name the dialect's own field
                exc.field = field + exc.field.removeprefix("input")
                exc.message = exc.message.replace("allow truncation", _allow_truncation(field))
                exc.args = (exc.message,)
            raise
        metrics.embeddings_total.inc(len(task.inputs))
        metrics.embedding_tokens_total.inc(outcome.prompt_tokens)
        return outcome, engine

    @router.post("/v1/embeddings", summary="Embed texts (OpenAI / vLLM / Jina shape)")
    async def openai_embeddings(request: Request, body: OpenAIEmbeddingRequest) -> Response:
        check_model(body.model)
        outcome, _ = await run(request, body.to_task(), "input")
        vectors = to_base64(outcome.vectors) if body.encoding_format == "base64" else outcome.vectors.tolist()
        return _Json(openai_answer(vectors, model_name, outcome.prompt_tokens))

    @router.post("/embed", summary="Embed texts (TEI shape): a bare array of vectors")
    async def tei_embed(request: Request, body: TEIEmbedRequest) -> Response:
        outcome, _ = await run(request, body.to_task(), "inputs")
        # TEI's bare array has no usage field; the gateway's token accounting reads this header instead.
        return _Json(outcome.vectors.tolist(), headers={"X-Prompt-Tokens": str(outcome.prompt_tokens)})

    @router.post("/v2/embed", summary="Embed texts (Cohere v2 shape) as float, int8, uint8, binary, ubinary")
    async def cohere_embed(request: Request, body: CohereEmbedRequest) -> Response:
        check_model(body.model)
        outcome, _ = await run(request, body.to_task(), "texts")
        return _Json(cohere_answer(_by_type(outcome, body.embedding_types), list(body.texts), outcome.prompt_tokens))

    @router.post("/v1/embed", summary="Embed texts (Cohere v1 shape: LangChain's CohereEmbeddings, the v1 SDK)")
    async def cohere_v1_embed(request: Request, body: CohereV1EmbedRequest) -> Response:
        check_model(body.model)
        v2 = body.as_v2()  # v2's task and quantisation: the two Cohere routes differ only in the answer's shape
        outcome, _ = await run(request, v2.to_task(), "texts")
        return _Json(cohere_v1_answer(_by_type(outcome, v2.embedding_types), list(body.texts),
                                      outcome.prompt_tokens, floats=body.embedding_types is None))

    return router


def _by_type(outcome: EmbedOutcome, kinds: Sequence[str]) -> dict[str, Any]:
    """Cohere's ``embeddings`` by type: each kind asked once, in the order asked, quantised from the floats."""
    return {kind: quantize(outcome.vectors, kind) for kind in dict.fromkeys(kinds)}


def _allow_truncation(field: str) -> str:
    if field == "texts":
        return "send `truncate: \"END\"`"
    if field == "inputs":
        return "send `truncate: true`"
    return "send `truncate: true`"
