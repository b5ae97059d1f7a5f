"""The gateway's scoring routes: HTTP in, a :class:`~rerankd.gateway.pipeline.ScoringCall` to the pipeline, HTTP out.

The routes take the server's own request and response models (one OpenAPI, the same 4xx for bad input)
and nothing else: what happens to a request is :mod:`rerankd.gateway.pipeline`'s business.
"""

from __future__ import annotations

from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import Response

from rerankd.gateway.admission import GatewayAdmissionRoute, ledger_route
from rerankd.gateway.answers import AnswerShape, check_answer
from rerankd.gateway.cost import ScoringBody
from rerankd.gateway.dependencies import Caller, Components
from rerankd.gateway.pipeline import ScoringCall
from rerankd.gateway.tokens import parse_answer
from rerankd.http.disconnect import unless_disconnected
from rerankd.http.middleware import request_id_of
from rerankd.protocol import (
    RerankAnyRequest,
    RerankRequest,
    RerankResponse,
    ScoreRequest,
    ScoreResponse,
    TEIRankItem,
)

__all__ = ["scoring_router"]

_JSON = "application/json"


async def _score(request: Request, components: Components, identity: Caller, route: str, model: str | None,
                 documents: int, parsed: ScoringBody, rerank: RerankRequest | None = None,
                 shape: AnswerShape = AnswerShape.RERANK) -> Response:
    """Hand one validated scoring request to the pipeline; its answer as the HTTP response."""
    call = ScoringCall(route=route, body=await request.body(), model=model or "", documents=documents,
                       request_id=request_id_of(request.scope),
                       request_id_given=request.scope["state"].get("request_id_given", False), parsed=parsed,
                       rerank=rerank, shape=shape)
    answer = await components.pipeline.run(call, identity, partial(unless_disconnected, request))
    return Response(content=answer.body, status_code=answer.status, media_type=_JSON, headers=answer.headers)


def scoring_router() -> APIRouter:
    """The rerank, score and model-list routes; the scoring ones admit their body before validating it."""
    router = APIRouter(route_class=GatewayAdmissionRoute)

    async def rerank(request: Request, body: RerankRequest, identity: Caller, components: Components) -> Response:
        return await _score(request, components, identity, request.url.path, body.model, len(body.documents),
                            parsed=body, rerank=body)

    router.post("/v1/rerank", response_model=RerankResponse,
                summary="Rerank documents (Jina / Cohere / vLLM shape)")(rerank)
    router.post("/v2/rerank", response_model=RerankResponse, summary="Rerank documents (Cohere v2 shape)")(rerank)

    @router.post("/rerank", response_model=RerankResponse | list[TEIRankItem],
                 summary="Rerank: Jina/Cohere shape with `documents`, or TEI shape with `texts`")
    async def rerank_any(request: Request, body: RerankAnyRequest, identity: Caller,
                         components: Components) -> Response:
        if isinstance(body, RerankRequest):
            return await rerank(request, body, identity, components)
        return await _score(request, components, identity, "/rerank", None, len(body.texts), body,  # TEI: no model
                            shape=AnswerShape.TEI)

    async def score(request: Request, body: ScoreRequest, identity: Caller, components: Components) -> Response:
        # ``/score`` is the same route as ``/v1/score`` upstream and in the ledger.
        return await _score(request, components, identity, ledger_route(request.url.path), body.model,
                            len(body.pairs()), body, shape=AnswerShape.SCORE)

    router.post("/v1/score", response_model=ScoreResponse, summary="Score pairs (vLLM score shape)")(score)
    router.post("/score", response_model=ScoreResponse, include_in_schema=False)(score)

    listing = APIRouter()

    @listing.get("/v1/models", summary="Models the replicas serve (OpenAI list)")
    async def models(request: Request, _: Caller, components: Components) -> Response:
        reply = await components.forwarder.send("/v1/models", b"", request_id_of(request.scope), method="GET")
        if reply.status == 200:
            check_answer(AnswerShape.MODELS, parse_answer(reply.body), 0)
        return Response(reply.body, status_code=reply.status, media_type=_JSON)

    router.include_router(listing)
    return router
