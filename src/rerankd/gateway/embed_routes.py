"""The gateway's embedding routes: OpenAI ``/v1/embeddings``, TEI ``/embed``, Cohere ``/v2/embed`` and ``/v1/embed``.

They are the scoring routes' twins (:mod:`rerankd.gateway.routes`): the same admission (key first, bounded
body, the server's own request models and 4xx), then one :class:`~rerankd.gateway.pipeline.ScoringCall` with
task ``embed``, so the model table routes it to an embedding pool, and keys, limits, the ledger, breakers,
failover and retries are the reranking ones. A large input list is split across the pool's replicas
(:mod:`rerankd.gateway.embed_split`). A gateway without an embedding pool answers 404 naming what it serves.
"""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rerankd.embedding_protocol import (
    CohereEmbedRequest,
    CohereV1EmbedRequest,
    OpenAIEmbeddingRequest,
    TEIEmbedRequest,
)
from rerankd.gateway.admission import GatewayAdmissionRoute
from rerankd.gateway.answers import AnswerShape
from rerankd.gateway.cost import EmbeddingBody
from rerankd.gateway.dependencies import Caller, Components
from rerankd.gateway.pipeline import ScoringCall
from rerankd.http.disconnect import unless_disconnected
from rerankd.http.middleware import request_id_of

__all__ = ["embedding_router"]


async def _embed(request: Request, components: Components, identity: Caller, model: str | None, inputs: int,
                 parsed: EmbeddingBody, shape: AnswerShape) -> Response:
    call = ScoringCall(route=request.url.path, body=await request.body(), model=model or "", documents=inputs,
                       request_id=request_id_of(request.scope),
                       request_id_given=request.scope["state"].get("request_id_given", False), parsed=parsed,
                       shape=shape, task="embed")
    answer = await components.pipeline.run(call, identity, partial(unless_disconnected, request))
    return Response(content=answer.body, status_code=answer.status, media_type="application/json",
                    headers=answer.headers)


def embedding_router() -> APIRouter:
    router = APIRouter(route_class=GatewayAdmissionRoute)

    @router.post("/v1/embeddings", summary="Embed texts (OpenAI / vLLM / Jina shape)")
    async def openai_embeddings(request: Request, body: OpenAIEmbeddingRequest, identity: Caller,
                                components: Components) -> Response:
        return await _embed(request, components, identity, body.model, len(body.to_task().inputs), body,
                            AnswerShape.OPENAI_EMBED)

    @router.post("/embed", summary="Embed texts (TEI shape): a bare array of vectors")
    async def tei_embed(request: Request, body: TEIEmbedRequest, identity: Caller,
                        components: Components) -> Response:
        return await _embed(request, components, identity, None, len(body.to_task().inputs), body,
                            AnswerShape.TEI_EMBED)

    @router.post("/v2/embed", summary="Embed texts (Cohere v2 shape)")
    async def cohere_embed(request: Request, body: CohereEmbedRequest, identity: Caller,
                           components: Components) -> Response:
        return await _embed(request, components, identity, body.model, len(body.texts), body,
                            AnswerShape.COHERE_EMBED)

    @router.post("/v1/embed", summary="Embed texts (Cohere v1 shape: LangChain's CohereEmbeddings, the v1 SDK)")
    async def cohere_v1_embed(request: Request, body: CohereV1EmbedRequest, identity: Caller,
                              components: Components) -> Response:
        return await _embed(request, components, identity, body.model, len(body.texts), body,
                            AnswerShape.COHERE_V1_EMBED)

    return router
