"""The gateway's scoring routes: authenticate, limit, forward or split, account.

Each scoring request follows the same path (:meth:`ScoringProxy.handle`): the caller is identified,
its request budget checked, the body (already validated with the server's own models, so bad input
gets the same 4xx here as from a replica) is forwarded with failover, or split across replicas when
it is large; then tokens are charged and exactly one usage row is recorded, whatever happened.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from rerankd.errors import PayloadTooLargeError, RateLimitedError, RerankdError
from rerankd.gateway.auth import Identity
from rerankd.gateway.cost import estimate_prompt_tokens, scoring_tasks
from rerankd.gateway.forward import UpstreamReply
from rerankd.gateway.ledger import UsageEntry
from rerankd.gateway.ratelimit import Reservation
from rerankd.gateway.split import merge_rerank_parts, plan_split
from rerankd.gateway.state import GatewayState
from rerankd.gateway.token_budget import admit_tokens, reject_if_never_fits, settle_tokens
from rerankd.http.disconnect import CLIENT_CLOSED_STATUS, ClientDisconnectedError, unless_disconnected
from rerankd.http.middleware import request_id_of
from rerankd.protocol import RerankRequest, RerankResponse, ScoreRequest, ScoreResponse, TEIRankItem, TEIRerankRequest

__all__ = ["ScoringProxy", "scoring_router"]

_JSON = "application/json"


class ScoringProxy:
    """Everything a scoring route does around the upstream call."""

    def __init__(self, state_of: Callable[[], GatewayState]) -> None:
        self._state_of = state_of

    async def identify(self, request: Request) -> Identity:
        """Authenticate (401/403 raise) and remember the key's name for the access log."""
        state = self._state_of()
        identity = await state.auth.identify(request.headers.get("authorization"),
                                             request_id=request_id_of(request.scope))
        request.scope["state"]["key_name"] = identity.name
        return identity

    async def handle(self, request: Request, identity: Identity, path: str, body: Any, documents: int,
                     send: Callable[[GatewayState, str], Awaitable[UpstreamReply]]) -> Response:
        """Run one scoring request end to end; ``send`` does the upstream part (plain or split)."""
        state = self._state_of()
        started = time.perf_counter()
        request_id = request_id_of(request.scope)
        status, tokens, upstream = 500, 0, None
        reservation: Reservation | None = None
        try:
            limit_headers, reservation = await self._admit(state, identity, body)
            if documents > state.settings.max_documents:
                raise PayloadTooLargeError(
                    f"{documents} documents is more than the gateway's limit of {state.settings.max_documents} "
                    "(--max-documents); split the request", field="documents")
            reply = await unless_disconnected(request, send(state, request_id))
            status, upstream = reply.status, reply.upstream
            if status == 200:
                tokens = _prompt_tokens(reply)
            settling, reservation = reservation, None
            limit_headers.update(await settle_tokens(state.limiter, settling, tokens))  # a failure refunds all
            return Response(content=reply.body, status_code=status, media_type=_JSON,
                            headers={**reply.headers, **limit_headers})
        except RerankdError as exc:
            status = exc.status_code
            raise
        except (ClientDisconnectedError, asyncio.CancelledError):
            status = CLIENT_CLOSED_STATUS
            raise
        finally:
            if reservation is not None:  # never forwarded, or cancelled: give the reservation back
                await asyncio.shield(settle_tokens(state.limiter, reservation, 0))
            latency_ms = (time.perf_counter() - started) * 1000
            given = request.scope["state"].get("request_id_given", False)
            # A client may reuse its own request id; the ledger's row id must still be unique.
            row_id = f"{request_id}~{uuid.uuid4().hex[:8]}" if given else request_id
            state.ledger.record(UsageEntry(
                request_id=row_id, key_id=identity.key_id, model=getattr(body, "model", None) or "",
                documents=documents, tokens=tokens, latency_ms=latency_ms, status=status, route=path,
                upstream=upstream[:512] if upstream else None))
            state.metrics.key_requests_total.labels(key=identity.name, status=str(status)).inc()
            if status == 200:
                state.metrics.key_tokens_total.labels(key=identity.name).inc(tokens)
                state.metrics.key_documents_total.labels(key=identity.name).inc(documents)

    async def _admit(self, state: GatewayState, identity: Identity,
                     body: Any) -> tuple[dict[str, str], Reservation]:
        """Spend one request of the key's requests/min and reserve an upper bound of its tokens/min."""
        estimate = 0
        if identity.tpm is not None:
            estimate = estimate_prompt_tokens(scoring_tasks(body), state.settings.upstream_max_model_len)
            reject_if_never_fits(identity, estimate)
        decision = await state.limiter.check_request(identity.key_id, identity.rpm)
        if not decision.allowed:
            state.metrics.rate_limited_total.labels(limit="requests").inc()
            raise RateLimitedError(
                f"rate limit of {identity.rpm} requests per minute reached for this key; retry after "
                f"{decision.retry_after} s", headers=decision.headers())
        headers = decision.headers()
        reservation, token_headers = await admit_tokens(state.limiter, identity, estimate, state.metrics, headers)
        return {**headers, **token_headers}, reservation


def _prompt_tokens(reply: UpstreamReply) -> int:
    """Tokens the replica reports: ``usage.prompt_tokens``, or the header TEI-shaped answers carry."""
    header = reply.headers.get("x-prompt-tokens")
    if header and header.isdigit():
        return int(header)
    try:
        usage = json.loads(reply.body).get("usage") or {}
        # A plain vLLM upstream reports only total_tokens (equal to prompt tokens for scoring).
        return int(usage.get("prompt_tokens") or usage.get("total_tokens") or 0)
    except (ValueError, AttributeError, TypeError):
        return 0


async def _gather_or_cancel(jobs: list[Awaitable[UpstreamReply]]) -> list[UpstreamReply]:
    """Await all parts; if one raises, cancel the rest instead of letting them run unobserved."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def scoring_router(proxy: ScoringProxy, state_of: Callable[[], GatewayState]) -> APIRouter:
    """The rerank and score routes, with the server's request and response models (one OpenAPI)."""
    router = APIRouter()

    # Authentication is a dependency so it runs before body validation: strangers learn nothing.
    Caller = Depends(proxy.identify)

    async def rerank(request: Request, body: RerankRequest, identity: Identity = Caller) -> Response:
        async def send(state: GatewayState, request_id: str) -> UpstreamReply:
            plan = plan_split(body, state.settings.split_threshold, state.pool.available_count())
            if plan is None:
                return await state.forwarder.send(request.url.path, await request.body(), request_id)
            state.metrics.split_requests_total.inc()
            state.metrics.split_parts.observe(len(plan.slices))
            spread: set[str] = set()
            replies = await _gather_or_cancel([
                state.forwarder.send(request.url.path, part, f"{request_id}.p{i}", spread=spread)
                for i, part in enumerate(plan.bodies())])
            failed = next((r for r in replies if r.status != 200), None)
            if failed is not None:
                return failed
            merged = merge_rerank_parts(plan, [json.loads(r.body) for r in replies], request_id)
            return UpstreamReply(status=200, body=json.dumps(merged, ensure_ascii=False).encode(), headers={},
                                 upstream=",".join(r.upstream for r in replies),
                                 attempts=max(r.attempts for r in replies))

        return await proxy.handle(request, identity, request.url.path, body, len(body.documents), send)

    def passthrough(path: str, request: Request) -> Callable[[GatewayState, str], Awaitable[UpstreamReply]]:
        async def send(state: GatewayState, request_id: str) -> UpstreamReply:
            # The client's bytes as they came (already validated): no re-encoding cost, nothing lost.
            return await state.forwarder.send(path, await request.body(), request_id)
        return send

    router.post("/v1/rerank", response_model=RerankResponse,
                summary="Rerank documents (Jina / Cohere / vLLM shape)")(rerank)
    router.post("/v2/rerank", response_model=RerankResponse, summary="Rerank documents (Cohere v2 shape)")(rerank)

    @router.post("/rerank", response_model=RerankResponse | list[TEIRankItem],
                 summary="Rerank: Jina/Cohere shape with `documents`, or TEI shape with `texts`")
    async def rerank_any(request: Request, body: RerankRequest | TEIRerankRequest,
                         identity: Identity = Caller) -> Response:
        if isinstance(body, RerankRequest):
            return await rerank(request, body, identity)
        return await proxy.handle(request, identity, "/rerank", body, len(body.texts), passthrough("/rerank", request))

    async def score(request: Request, body: ScoreRequest, identity: Identity = Caller) -> Response:
        documents = len(body.pairs())
        return await proxy.handle(request, identity, "/v1/score", body, documents, passthrough("/v1/score", request))

    router.post("/v1/score", response_model=ScoreResponse, summary="Score pairs (vLLM score shape)")(score)
    router.post("/score", response_model=ScoreResponse, include_in_schema=False)(score)
    return router
