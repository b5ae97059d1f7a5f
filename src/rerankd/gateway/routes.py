"""The gateway's scoring routes: HTTP in, a :class:`~rerankd.gateway.pipeline.ScoringCall` to the pipeline, HTTP out.

The routes take the server's own request and response models (one OpenAPI, the same 4xx for bad input)
and nothing else: what happens to a request is :mod:`rerankd.gateway.pipeline`'s business.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from rerankd.errors import ModelNotFoundError, RerankdError
from rerankd.gateway.admission import GatewayAdmissionRoute, ledger_route
from rerankd.gateway.answers import AnswerShape, check_answer
from rerankd.gateway.cost import ScoringBody
from rerankd.gateway.dependencies import Caller, Components
from rerankd.gateway.model_table import ModelEntry
from rerankd.gateway.pipeline import ScoringCall
from rerankd.gateway.pools import ModelPool, PoolSet
from rerankd.gateway.tokens import parse_answer
from rerankd.http.disconnect import unless_disconnected
from rerankd.http.errors import TEI_ERROR_RESPONSES
from rerankd.http.middleware import request_id_of
from rerankd.protocol import (
    AnyRerankRequest,
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

    @router.post("/rerank", response_model=RerankResponse | list[TEIRankItem], responses=TEI_ERROR_RESPONSES,
                 summary="Rerank: Jina/Cohere shape with `documents`, or TEI shape with `texts`")
    async def rerank_any(request: Request, body: AnyRerankRequest, identity: Caller,
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

    @listing.get("/v1/models", summary="Every public model name and alias (OpenAI list)")
    async def models(request: Request, _: Caller, components: Components) -> Response:
        pools = components.pools
        data = [_card(entry, pools) for entry in pools.table.entries]
        unnamed = next((p for p in pools.pools if not p.named), None)
        if unnamed is None:
            return JSONResponse({"object": "list", "data": data})
        try:  # the --upstream pool's names are what its replicas list, as before the model table
            reply = await unnamed.forwarder.send("/v1/models", b"", request_id_of(request.scope), method="GET")
        except RerankdError:
            if not data:
                raise
            return JSONResponse({"object": "list", "data": data})
        if reply.status != 200:
            if not data:
                return Response(reply.body, status_code=reply.status, media_type=_JSON)
            return JSONResponse({"object": "list", "data": data})
        answer = parse_answer(reply.body)
        check_answer(AnswerShape.MODELS, answer, 0)
        if not data:
            return Response(reply.body, status_code=200, media_type=_JSON)  # byte for byte, as before
        listed = {card["id"] for card in data}
        learned = [c for c in answer["data"] if isinstance(c, dict) and c.get("id") not in listed]
        return JSONResponse({"object": "list", "data": [*data, *learned]})

    @listing.get("/v1/models/{model_id:path}", summary="One model (OpenAI model object); 404 when not served")
    async def model(model_id: str, request: Request, identity: Caller, components: Components) -> Response:
        pools = components.pools
        entry = pools.table.find(model_id)
        if entry is not None:
            return JSONResponse(_card(entry, pools))
        if any(not p.named for p in pools.pools):
            listing_reply = await models(request, identity, components)
            if listing_reply.status_code == 200:
                found = next((c for c in json.loads(bytes(listing_reply.body))["data"]
                              if isinstance(c, dict) and c.get("id") == model_id), None)
                if found is not None:
                    return JSONResponse(found)
        served = ", ".join(e.id for e in pools.table.entries) or "see GET /v1/models"
        raise ModelNotFoundError(f"model {model_id!r} is not served by this gateway; models served: {served}")

    router.include_router(listing)
    return router


def _card(entry: ModelEntry[ModelPool], pools: PoolSet) -> dict[str, Any]:
    """An OpenAI model object for a public name; ``pool`` names the pool an alias routes to."""
    return {"id": entry.id, "object": "model", "created": pools.created, "owned_by": "rerankd",
            "task": entry.pool.task, "pool": entry.pool.name}
