"""One scoring request through the gateway, step by step: admit → forward → charge → record.

The caller was authenticated before (:mod:`rerankd.gateway.authenticate`, a route dependency, so it
runs before body validation: strangers learn nothing), and the body was validated with the server's own
models, so bad input gets the same 4xx here as from a replica. Then:

1. admit (:mod:`~rerankd.gateway.admit`): requests/min spent, document count and cost checked, an upper
   bound of the tokens reserved from the key's tokens/min;
2. route and forward: the model table (:mod:`~rerankd.gateway.model_table`) picks the pool for the request's
   ``model`` (a 404 in strict mode when none matches; a rollout may hand it to another pool,
   :mod:`~rerankd.gateway.rollout`), the body's ``model`` and ``priority`` are fitted
   (:mod:`~rerankd.gateway.upstream_body`), then :mod:`~rerankd.gateway.distribute` sends it to one of the
   pool's replicas with failover, or splits and merges it;
3. charge (:mod:`~rerankd.gateway.charge`): the reservation settled to the tokens the replica reports
   (:mod:`~rerankd.gateway.tokens`; an implausible count, or a 200 not in the route's shape
   (:mod:`~rerankd.gateway.answers`), is a 502 and the reservation is refunded), and
   refunded whole when the request failed, was cancelled or never reached a replica;
4. record: exactly one usage row and the per-key metrics, whatever happened above.

A 200 that a rollout samples is also sent to its shadow pool once answered (:mod:`~rerankd.gateway.shadow`):
in the background, never charged, its answer only compared.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from functools import partial

from rerankd.errors import RerankdError
from rerankd.gateway.admit import Admission
from rerankd.gateway.answers import EMBED_SHAPES, AnswerShape, accept_answer
from rerankd.gateway.authenticate import Identity
from rerankd.gateway.charge import Outcome, UsageCharger
from rerankd.gateway.cost import EmbeddingBody, ScoringBody
from rerankd.gateway.forward import UpstreamReply
from rerankd.gateway.model_table import Task
from rerankd.gateway.pools import ModelPool, PoolSet
from rerankd.gateway.ratelimit import Reservation
from rerankd.gateway.shadow import ShadowScorer
from rerankd.gateway.upstream_body import plan_edits
from rerankd.http.disconnect import CLIENT_CLOSED_STATUS, ClientDisconnectedError
from rerankd.observability import tracing
from rerankd.protocol import RerankRequest

__all__ = ["Guard", "ScoringAnswer", "ScoringCall", "ScoringPipeline"]

Guard = Callable[[Awaitable[UpstreamReply]], Awaitable[UpstreamReply]]
"""Wraps the upstream part of a request; the routes pass one that cancels it when the client hangs up."""


@dataclass(frozen=True)
class ScoringCall:
    """What the pipeline needs of one scoring request, taken from HTTP by the route."""

    route: str  # the upstream path, and the ledger's route
    body: bytes  # the client's bytes, sent on as they are unless the request is split
    model: str
    documents: int
    request_id: str
    request_id_given: bool  # the client chose the id (it may reuse it)
    parsed: ScoringBody | EmbeddingBody  # the validated body: what admission estimates the tokens of
    rerank: RerankRequest | None = None  # set when the request may be split across replicas
    shape: AnswerShape = AnswerShape.RERANK  # what the replica's 200 must look like
    task: Task = "rerank"  # which of the model table's routes the request takes


@dataclass(frozen=True)
class ScoringAnswer:
    """The answer to send: the replica's status and body, its headers and the rate-limit ones."""

    status: int
    body: bytes
    headers: dict[str, str]


class ScoringPipeline:
    """Runs :class:`ScoringCall`\\ s through the steps; each step is a component with its own tests."""

    def __init__(self, admission: Admission, pools: PoolSet, charger: UsageCharger,
                 shadow: ShadowScorer | None = None) -> None:
        self._admission = admission
        self._pools = pools
        self._charger = charger
        self._shadow = shadow

    async def run(self, call: ScoringCall, identity: Identity, guard: Guard) -> ScoringAnswer:
        """The request end to end; typed errors propagate (their status is recorded first)."""
        started = time.perf_counter()
        status, tokens, upstream = 500, 0, None
        model = call.model  # the ledger's: the pool that served it, once routed (see docs/gateway.md)
        reservation: Reservation | None = None
        try:
            with tracing.span("gateway.rate_limit"):
                limit_headers, reservation = await self._admission.admit(identity, call.documents, call.parsed)
            pool, rollout = self._pools.route(call.task, call.model, identity.key_id)
            if pool.named:
                model = pool.name
            reply = await guard(self._forward(call, identity, pool))
            status, upstream = reply.status, reply.upstream
            if status == 200:
                # A wrong shape or a garbage count raises the 502 here, before anything is charged.
                tokens = accept_answer(call.shape, reply.headers, reply.body, call.documents)
                if self._shadow is not None:  # a sampled request is scored on the shadow too, in the background
                    self._shadow.offer(rollout, pool, call.shape, call.documents, reply.body,
                                       partial(self._forward, replace(call, request_id=f"{call.request_id}.shadow"),
                                               identity))
            settling, reservation = reservation, None
            with tracing.span("gateway.rate_limit.settle") as current:
                if current is not None:
                    current.set_attribute("rerankd.tokens", tokens)
                limit_headers.update(await self._charger.settle(settling, tokens))  # a failed request refunds all
            return ScoringAnswer(status=status, body=reply.body, headers={**reply.headers, **limit_headers})
        except RerankdError as exc:
            status = exc.status_code
            raise
        except (ClientDisconnectedError, asyncio.CancelledError):
            status = CLIENT_CLOSED_STATUS
            raise
        finally:
            if reservation is not None:  # never answered (cancelled, a 502, an error): give the tokens back
                await asyncio.shield(self._charger.settle(reservation, 0))
            with tracing.span("gateway.ledger.record"):
                self._charger.record(Outcome(
                    identity=identity, route=call.route, model=model, documents=call.documents, status=status,
                    tokens=tokens, latency_ms=(time.perf_counter() - started) * 1000, request_id=call.request_id,
                    request_id_given=call.request_id_given, upstream=upstream))

    async def refuse(self, identity: Identity, *, route: str, request_id: str, request_id_given: bool,
                     status: int, started: float) -> None:
        """Charge a request refused before the pipeline (its size or shape: 400/413/422): it spends one of the
        key's requests/min and gets its usage row (0 tokens) like any other refusal, so oversized requests
        are not free. Raises the 429 instead when the key's requests/min was already spent."""
        try:
            await self._admission.spend_request(identity)
        except RerankdError as exc:
            status = exc.status_code
            raise
        finally:
            self._charger.record(Outcome(
                identity=identity, route=route, model="", documents=0, status=status, tokens=0,
                latency_ms=(time.perf_counter() - started) * 1000, request_id=request_id,
                request_id_given=request_id_given))

    def _forward(self, call: ScoringCall, identity: Identity, pool: ModelPool) -> Awaitable[UpstreamReply]:
        whole, parts = plan_edits(call.body, call.model or None, pool.served_model, keep_model=not pool.named,
                                  key_priority=identity.priority)
        body = whole.apply(call.body)
        tenant = identity.key_id  # the replicas share their batcher's turns per tenant
        if call.shape in EMBED_SHAPES:
            return pool.distributor.send_embed(call.route, body, call.shape, call.documents, call.request_id,
                                               tenant=tenant, part_edit=parts)
        if call.rerank is not None:
            return pool.distributor.send_rerank(call.route, body, call.rerank, call.request_id, tenant=tenant,
                                                part_edit=parts)
        return pool.distributor.send(call.route, body, call.request_id, tenant=tenant)
