"""Step 3 of a scoring request, forward: to one replica, or split across several and merged.

:class:`~rerankd.gateway.forward.Forwarder` sends one body with failover; :mod:`rerankd.gateway.split`
plans the parts and merges their answers exactly. This module runs a split: the parts go out at once,
each preferring a replica no sibling took, and the first part that fails fails the request (its
answer is what the client sees) and cancels the others, which nobody will read.

Traces: a request sent whole is one ``gateway.forward`` span; a split one is a ``gateway.split`` span with a
``gateway.split.part`` child per part (its index and slice), and each attempt at a replica is a client span
under those (:class:`~rerankd.gateway.forward.Forwarder`), whose ``traceparent`` the replica continues.
"""

from __future__ import annotations

import json

from rerankd.errors import UpstreamMalformedError
from rerankd.gateway.answers import AnswerShape, check_answer
from rerankd.gateway.embed_split import EmbedSplitPlan, merge_embed_parts, part_tokens, plan_embed_split
from rerankd.gateway.forward import Forwarder, UpstreamReply
from rerankd.gateway.pool import UpstreamPool
from rerankd.gateway.split import SplitPlan, merge_rerank_parts, plan_split
from rerankd.gateway.tokens import TOKENS_HEADER, parse_answer, parse_token_header
from rerankd.gateway.upstream_body import BodyEdit
from rerankd.observability import tracing
from rerankd.observability.gateway_metrics import GatewayMetrics
from rerankd.protocol import RerankRequest
from rerankd.tasks import gather_or_cancel

__all__ = ["Distributor", "gather_or_cancel"]


class Distributor:
    """Sends scoring bodies to the fleet: as they came, or a large rerank split over the replicas."""

    def __init__(self, forwarder: Forwarder, pool: UpstreamPool, metrics: GatewayMetrics, *,
                 split_threshold: int) -> None:
        self._forwarder = forwarder
        self._pool = pool
        self._metrics = metrics
        self._split_threshold = split_threshold

    async def send(self, path: str, body: bytes, request_id: str, *, tenant: str | None = None) -> UpstreamReply:
        """The client's bytes as they came (already validated): no re-encoding cost, nothing lost.
        ``tenant`` is the caller's key id, for the replicas' batchers (:meth:`Forwarder.send`)."""
        with tracing.span("gateway.forward"):
            return await self._forwarder.send(path, body, request_id, tenant=tenant)

    async def send_rerank(self, path: str, body: bytes, request: RerankRequest, request_id: str, *,
                          tenant: str | None = None, part_edit: BodyEdit | None = None) -> UpstreamReply:
        """A rerank request: split when it is large and more than one replica can help, else as it came.
        ``part_edit`` is made to each part's body (:mod:`rerankd.gateway.upstream_body`)."""
        plan = plan_split(request, self._split_threshold, self._pool.available_count())
        if plan is None:
            return await self.send(path, body, request_id, tenant=tenant)
        return await self._send_split(path, plan, request_id, tenant, part_edit or BodyEdit())

    async def _send_part(self, path: str, body: bytes, request_id: str, index: int, where: tuple[int, int],
                         spread: set[str], tenant: str | None) -> UpstreamReply:
        """One part of a split, in a span of its own (the retries of the part are its children)."""
        start, end = where
        with tracing.span("gateway.split.part", attributes={"rerankd.split.part": index, "rerankd.split.start": start,
                                                            "rerankd.split.end": end}):
            return await self._forwarder.send(path, body, f"{request_id}.p{index}", spread=spread, tenant=tenant)

    async def send_embed(self, path: str, body: bytes, shape: AnswerShape, inputs: int, request_id: str, *,
                         tenant: str | None = None, part_edit: BodyEdit | None = None) -> UpstreamReply:
        """An embedding request: its input list split when it is large and more than one replica can help
        (:mod:`rerankd.gateway.embed_split`), else as it came. ``part_edit`` is made to each part's body."""
        plan = plan_embed_split(shape, body, inputs, self._split_threshold, self._pool.available_count())
        if plan is None:
            return await self.send(path, body, request_id, tenant=tenant)
        return await self._send_embed_split(path, plan, request_id, tenant, part_edit or BodyEdit())

    async def _send_parts(self, path: str, parts: list[bytes], slices: list[tuple[int, int]], request_id: str,
                          tenant: str | None, part_edit: BodyEdit) -> list[UpstreamReply]:
        """Every part of a split request at once, spread over distinct replicas (rerank and embed alike)."""
        self._metrics.split_requests_total.inc()
        self._metrics.split_parts.observe(len(parts))
        spread: set[str] = set()
        with tracing.span("gateway.split", attributes={"url.path": path, "rerankd.split.parts": len(parts)}):
            return await gather_or_cancel([
                self._send_part(path, part_edit.apply(part), request_id, i, where, spread, tenant)
                for i, (part, where) in enumerate(zip(parts, slices, strict=True))])

    async def _send_embed_split(self, path: str, plan: EmbedSplitPlan, request_id: str, tenant: str | None,
                                part_edit: BodyEdit) -> UpstreamReply:
        replies = await self._send_parts(path, plan.bodies(), plan.slices, request_id, tenant, part_edit)
        failed = next((r for r in replies if r.status != 200), None)
        if failed is not None:
            return failed
        upstreams = ",".join(r.upstream for r in replies)
        answers = [parse_answer(r.body) for r in replies]
        tokens = []
        for (start, end), answer, reply in zip(plan.slices, answers, replies, strict=True):
            check_answer(plan.shape, answer, end - start)
            header = reply.headers.get(TOKENS_HEADER)
            tokens.append(parse_token_header(header) if header is not None else part_tokens(plan.shape, answer))
        try:
            merged, total = merge_embed_parts(plan, answers, tokens)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise UpstreamMalformedError(
                f"a replica answered a split part with a malformed embedding response ({upstreams}: "
                f"{type(exc).__name__})") from None
        return UpstreamReply(status=200, body=json.dumps(merged, ensure_ascii=False, separators=(",", ":")).encode(),
                             headers={TOKENS_HEADER: str(total)}, upstream=upstreams,
                             attempts=max(r.attempts for r in replies))

    async def _send_split(self, path: str, plan: SplitPlan, request_id: str, tenant: str | None,
                          part_edit: BodyEdit) -> UpstreamReply:
        replies = await self._send_parts(path, plan.bodies(), plan.slices, request_id, tenant, part_edit)
        failed = next((r for r in replies if r.status != 200), None)
        if failed is not None:
            return failed
        upstreams = ",".join(r.upstream for r in replies)
        answers = [parse_answer(r.body) for r in replies]
        for (start, end), answer in zip(plan.slices, answers, strict=True):
            check_answer(AnswerShape.RERANK, answer, end - start)  # indexes within the part's own slice
        try:
            merged = merge_rerank_parts(plan, answers, request_id)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            # Raised before anything is charged: the request is answered 502 and recorded unbilled.
            raise UpstreamMalformedError(
                f"a replica answered a split part with a malformed rerank response ({upstreams}: "
                f"{type(exc).__name__})") from None
        return UpstreamReply(status=200, body=json.dumps(merged, ensure_ascii=False).encode(), headers={},
                             upstream=upstreams, attempts=max(r.attempts for r in replies))
