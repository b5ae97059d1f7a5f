"""Dynamic batching across concurrent requests, with a bounded queue.

Why: a forward pass over 32 short pairs costs little more than one over 4, so pairs of concurrent
requests are packed into the same micro-batch. Where a batch is cut is :func:`rerankd.engine.batching.cut_batch`
(a token budget over padded rows, each request's documents shortest first), and in which order waiting
requests are offered rows is :func:`~rerankd.engine.batching.service_order` (round robin over tenants and
requests, requests on their first turn first, lower ``priority`` strictly first, so a 1-document request is
not stuck behind the 1000 rows of one that arrived just before it); a pass that holds a request's first rows
takes only ``fill_tokens`` of rows already under way, so that request's pass is a short one. This module owns
the queue, the worker and what happens to each request's results.

One worker task forms batches and hands them to a single-thread executor: one pass at a time per lane, and
the event loop never blocks on the model. A request whose client went away is marked cancelled and its
remaining pairs are never computed.

Lanes (``bulk_nice`` > 0, the torch backend on the CPU): a request whose rows cost more than one pass's budget
(``max_batch_tokens``) is *bulk*, and its rows run in passes of their own on a second executor whose thread has
a lower OS priority (:mod:`rerankd.engine.bulk`); every other request runs in the *interactive* lane, beside a
bulk pass under way rather than after it, and the kernel gives the interactive pass the cores. Within a lane the
cut and the turns are the rules below; across lanes the only order is the OS priority. Without ``bulk_nice``
(a GPU, the vllm backend) there is one lane and every request is in it.

Traces: the worker serves many requests in one pass, outside any request's task, so each request keeps the
trace context it was submitted in and the worker records spans under it with their own times:
``rerankd.queue_wait`` (queued until its first rows reach a pass) and one ``rerankd.batch`` per pass that held
rows of it (the pass's size beside this request's share).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rerankd.engine.backends.base import ScoringBackend, TokenGroup
from rerankd.engine.batching import Turn, WaitingRows, cut_batch, dispatch_order, service_order
from rerankd.engine.bulk import hand_over_the_gil_often, lower_priority_executor
from rerankd.errors import NotReadyError, OverloadedError
from rerankd.observability import tracing
from rerankd.observability.metrics import ServerMetrics

__all__ = ["DynamicBatcher"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Pending:
    """One request in the queue: which of its tails were dispatched, which results came back."""

    shared: list[int]
    tails: list[list[int]]
    future: asyncio.Future[list[Any]]
    enqueued_at: float
    tenant: str | None
    arrived: int
    priority: int = 0
    trace: tracing.Context | None = None  # the submitter's trace context (None when tracing is off)
    enqueued_ns: int = 0  # wall clock, for the queue-wait span (set only while tracing)
    last_served: int = -1
    order: list[int] = field(init=False)
    lengths: list[int] = field(init=False)
    next_tail: int = 0
    remaining: int = field(init=False)
    tokens_left: int = field(init=False)
    results: list[Any] = field(init=False)
    cancelled: bool = False
    bulk: bool = False  # rows run in the bulk lane (set by the batcher from its budget)

    def __post_init__(self) -> None:
        self.order = dispatch_order(self.tails)
        self.lengths = [len(self.tails[i]) for i in self.order]
        self.remaining = len(self.tails)
        # Row tokens (prefix + document, as a pass is budgeted) not scored yet: the replica's work ahead.
        self.tokens_left = sum(self.lengths) + len(self.shared) * len(self.tails)
        self.results = [0.0] * len(self.tails)  # scores, or vectors for an embedding engine

    @property
    def started(self) -> bool:
        return self.next_tail > 0

    @property
    def live(self) -> bool:
        """Whether this request still counts as load: neither answered nor given up."""
        return not self.cancelled and not self.future.done()

    @property
    def has_rows(self) -> bool:
        """Whether rows of this request still wait for a batch."""
        return not self.cancelled and self.next_tail < len(self.tails)

    def waiting_rows(self) -> WaitingRows:
        return WaitingRows(len(self.shared), self.lengths, self.next_tail)

    def turn(self) -> Turn:
        return Turn(self.tenant, self.last_served, self.arrived, self.priority)


@dataclass
class _Slice:
    pending: _Pending
    indices: list[int]


@dataclass(eq=False)
class _Lane:
    """One executor and whether a pass of it is under way: at most one pass per lane at a time."""

    name: str
    executor: ThreadPoolExecutor
    bulk: bool
    task: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()


# A pass holding a request's first rows takes rows of requests under way up to this share of the budget.
FILL_SHARE = 8


class DynamicBatcher:
    """Packs pairs of concurrent requests into token-budgeted micro-batches for one backend.

    ``fill_tokens``: what a pass holding rows of a request on its first turn may cost with rows of requests
    already under way (:func:`~rerankd.engine.batching.cut_batch`); default ``max_batch_tokens // 8``.
    ``bulk_nice``: above 0, requests costing more than ``max_batch_tokens`` run in a lane of their own, that many
    nice steps lower (the backend must take two passes at once); 0, one lane.
    """

    def __init__(
        self,
        backend: ScoringBackend,
        *,
        max_batch_tokens: int,
        max_queue: int,
        metrics: ServerMetrics,
        fill_tokens: int | None = None,
        forward: Callable[[list[TokenGroup]], list[list[Any]]] | None = None,
        bulk_nice: int = 0,
    ) -> None:
        """``forward``: what a batch runs, one result per tail (default ``backend.score``; an embedding engine
        passes ``backend.embed``)."""
        self.backend = backend
        self._forward_pass = forward if forward is not None else backend.score
        self.max_batch_tokens = max_batch_tokens
        self.fill_tokens = max(1, max_batch_tokens // FILL_SHARE) if fill_tokens is None else fill_tokens
        self.max_queue = max_queue
        self.metrics = metrics
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self._lanes = [_Lane("interactive", ThreadPoolExecutor(max_workers=1, thread_name_prefix="rerankd-forward"),
                             bulk=False)]
        if bulk_nice > 0:
            self._lanes.append(_Lane("bulk", lower_priority_executor(bulk_nice, "rerankd-bulk-forward"), bulk=True))
            hand_over_the_gil_often()  # the event loop and the interactive pass never wait long on the bulk pass
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._arrivals = 0
        self._batches = 0
        self._tenant_served: dict[str | None, int] = {}  # last batch per tenant; forgotten when the queue empties

    @property
    def waiting(self) -> int:
        """Requests queued whose first pair has not reached the model yet."""
        return sum(1 for p in self._queue if not p.started and not p.cancelled)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="rerankd-batcher")

    async def close(self) -> None:
        """Stop taking work; fail whatever still waits; release the executor."""
        self._closed = True
        passes = [lane.task for lane in self._lanes if lane.task is not None]
        for task in [self._worker, *passes]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(NotReadyError("server is shutting down", retry_after=1))
        # Off the loop: a forward pass still running must not stall every other coroutine while it ends.
        for lane in self._lanes:
            await asyncio.to_thread(lane.executor.shutdown, wait=True)

    async def submit(self, shared: list[int], tails: list[list[int]], *, tenant: str | None = None,
                     priority: int = 0) -> list[Any]:
        """Queue one request's prompts; return their raw scores in order. ``tenant``: who asks, for fair turns.

        ``priority``: lower is served first (vLLM's meaning; default 0), strictly: rows of a higher value
        get only what a pass has left once every waiting row of a lower value is in it, and no aging lifts
        them, so a steady stream of priority 0 that fills every pass holds priority 1 back for as long as it
        lasts. Within one priority, tenants take turns (:func:`~rerankd.engine.batching.service_order`).
        Raises :class:`OverloadedError` at once when ``max_queue`` requests already wait, whatever their
        priority.
        """
        if self._closed:
            raise NotReadyError("server is shutting down", retry_after=1)
        if self.waiting >= self.max_queue:
            raise OverloadedError(
                f"the queue is full ({self.max_queue} requests waiting); retry later", retry_after=1
            )
        loop = asyncio.get_running_loop()
        pending = _Pending(shared, tails, loop.create_future(), time.perf_counter(), tenant, self._arrivals, priority)
        pending.bulk = len(self._lanes) > 1 and pending.tokens_left > self.max_batch_tokens
        if tracing.enabled():
            pending.trace, pending.enqueued_ns = tracing.current_context(), time.time_ns()
        self._arrivals += 1
        self._queue.append(pending)
        self._set_load_gauges()
        self._wakeup.set()
        try:
            return await asyncio.shield(pending.future)
        except asyncio.CancelledError:
            pending.cancelled = True
            self.metrics.cancelled_requests_total.inc()
            self._set_load_gauges()
            raise

    def _set_load_gauges(self) -> None:
        """The load an endpoint picker reads (docs/observability.md): waiting, running, work ahead.

        Set on the event loop at each change (a request queued, a pass cut, a pass answered, a client gone),
        never computed at scrape time from another thread while the queue changes.
        """
        live = [p for p in self._queue if p.live]
        waiting = sum(1 for p in live if not p.started)
        tokens = sum(p.tokens_left for p in live)
        m = self.metrics
        m.queue_depth.set(waiting)
        m.requests_running.set(len(live) - waiting)
        m.inflight_tokens.set(tokens)
        m.token_utilization_ratio.set(min(1.0, tokens / self.max_batch_tokens))

    def _next_batch(self, lane: _Lane) -> list[_Slice]:
        """Take the rows of ``lane``'s requests that :func:`cut_batch` admits, in :func:`service_order`, and mark
        them dispatched.

        The groups of the batch are in arrival order, whoever was offered rows first.
        """
        live = [p for p in self._queue if p.has_rows and p.bulk == lane.bulk]
        if not live:
            return []
        live = [live[i] for i in service_order([p.turn() for p in live], self._tenant_served)]
        counts = cut_batch((p.waiting_rows() for p in live), self.max_batch_tokens, self.fill_tokens)
        slices: list[_Slice] = []
        for pending, taken in zip(live, counts, strict=False):  # counts stop where the cut falls
            if not taken:
                continue
            if not pending.started:
                self.metrics.queue_time_seconds.observe(time.perf_counter() - pending.enqueued_at)
                if pending.trace is not None:
                    tracing.record_span("rerankd.queue_wait", pending.trace, pending.enqueued_ns, time.time_ns(),
                                        {"rerankd.priority": pending.priority})
            slices.append(_Slice(pending, pending.order[pending.next_tail : pending.next_tail + taken]))
            pending.next_tail += taken
            pending.last_served = self._batches
            self._tenant_served[pending.tenant] = self._batches
        self._batches += 1
        return sorted(slices, key=lambda s: s.pending.arrived)

    async def _run(self) -> None:
        """Start a pass in every idle lane with rows waiting; wake up when a request comes or a pass ends."""
        while True:
            self._wakeup.clear()
            self._drop_finished()
            for lane in self._lanes:
                if lane.busy:
                    continue
                slices = self._next_batch(lane)
                if slices:
                    lane.task = asyncio.get_running_loop().create_task(self._pass(lane, slices),
                                                                         name=f"rerankd-{lane.name}-pass")
                    lane.task.add_done_callback(lambda _task: self._wakeup.set())
            if not any(lane.busy for lane in self._lanes) and not any(p.has_rows for p in self._queue):
                self._tenant_served.clear()  # idle: every tenant starts even
            await self._wakeup.wait()

    async def _pass(self, lane: _Lane, slices: list[_Slice]) -> None:
        """Run one forward pass on ``lane``'s executor and hand each request its results."""
        self._set_load_gauges()
        groups = [TokenGroup(s.pending.shared, [s.pending.tails[i] for i in s.indices]) for s in slices]
        started = time.perf_counter()
        started_ns = time.time_ns() if tracing.enabled() else 0
        try:
            scores = await asyncio.get_running_loop().run_in_executor(lane.executor, self._forward_pass, groups)
        except Exception as exc:  # a backend failure fails its requests, never the worker
            log.exception("forward pass failed")
            self.metrics.errors_total.labels(type="backend").inc()
            for s in slices:
                if not s.pending.future.done():
                    s.pending.future.set_exception(exc)
                    s.pending.cancelled = True
            self._set_load_gauges()
            return
        self._observe(groups, time.perf_counter() - started, len(slices))
        if started_ns:
            self._trace_batch(slices, groups, started_ns)
        for s, group_scores in zip(slices, scores, strict=True):
            p = s.pending
            for i, score in zip(s.indices, group_scores, strict=True):
                p.results[i] = score
            p.remaining -= len(s.indices)
            p.tokens_left -= sum(len(p.shared) + len(p.tails[i]) for i in s.indices)
            if p.remaining == 0 and not p.future.done():
                p.future.set_result(p.results)
        self._set_load_gauges()

    def _trace_batch(self, slices: list[_Slice], groups: list[TokenGroup], started_ns: int) -> None:
        """One ``rerankd.batch`` span per traced request in the pass just run."""
        ended_ns = time.time_ns()
        batch = {"rerankd.batch.index": self._batches - 1, "rerankd.batch.requests": len(slices),
                 "rerankd.batch.pairs": sum(len(g.tails) for g in groups),
                 "rerankd.batch.tokens": sum(g.tokens for g in groups)}
        for s in slices:
            if s.pending.trace is not None:
                tracing.record_span("rerankd.batch", s.pending.trace, started_ns, ended_ns,
                                    {**batch, "rerankd.batch.rows": len(s.indices)})

    def _drop_finished(self) -> None:
        self._queue = collections.deque(
            p for p in self._queue if not p.future.done() and not p.cancelled
        )

    def _observe(self, groups: list[TokenGroup], seconds: float, n_requests: int) -> None:
        m = self.metrics
        pairs = sum(len(g.tails) for g in groups)
        tokens = sum(g.tokens for g in groups)
        m.inference_time_seconds.observe(seconds)
        m.batch_size.observe(pairs)
        m.batch_requests.observe(n_requests)
        m.batch_tokens.observe(tokens)
        m.pairs_total.inc(pairs)
        m.tokens_total.inc(tokens)
        log.debug("batch pairs=%d requests=%d tokens=%d seconds=%.4f", pairs, n_requests, tokens, seconds)
