"""Shadow scoring: a sample of live requests also scored on a rollout's shadow pool, and the answers compared.

Why after the live answer, in a task of its own: the client must never wait for, or see, the new model. The
shadow request starts once the live answer is in hand (nothing of the live path is shared or awaited), runs
with the shadow pool's own replicas, breakers and retry budget, and whatever it does (fails, times out,
answers garbage) is only counted. Why a bound that drops rather than queues: a slow shadow pool would
otherwise pile up tasks and connections in the gateway that serves live traffic; past ``shadow-concurrency``
in flight a sampled request is counted ``dropped`` and nothing is sent.

What is exported per compared request (labels ``model``, ``pool`` = the live pool, ``shadow``): the drift of
every document (:mod:`rerankd.gateway.agreement`), Spearman's rho and the top-k overlap.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable

from rerankd.gateway.agreement import Agreement, compare_scores, scores_of
from rerankd.gateway.answers import AnswerShape, check_answer
from rerankd.gateway.forward import UpstreamReply
from rerankd.gateway.pools import ModelPool
from rerankd.gateway.rollout import Rollout
from rerankd.gateway.tokens import parse_answer
from rerankd.observability.gateway_metrics import GatewayMetrics

__all__ = ["SHADOW_SHAPES", "ShadowScorer"]

log = logging.getLogger(__name__)

SHADOW_SHAPES = frozenset({AnswerShape.RERANK, AnswerShape.TEI, AnswerShape.SCORE})

Send = Callable[[ModelPool], Awaitable[UpstreamReply]]
"""Sends the request (fitted to the pool, as the live one was) to a pool; the pipeline's forward step."""


class _ShadowRefused(Exception):
    """The shadow pool answered something other than a 200 (counted as ``failed``)."""


class ShadowScorer:
    """Starts the shadow requests of sampled live ones and records how far the answers agree."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self._in_flight: defaultdict[int, int] = defaultdict(int)  # per rollout (id): shadow requests running

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def offer(self, rollout: Rollout[ModelPool] | None, live: ModelPool, shape: AnswerShape, documents: int,
              live_body: bytes, send: Send) -> None:
        """Called with each live 200: when it is in the rollout's sample, score it on the shadow, in the
        background. Returns at once; never raises."""
        if rollout is None or shape not in SHADOW_SHAPES:
            return
        shadow = rollout.shadow_for(live)
        if shadow is None:
            return
        labels = (rollout.model.name, live.name, shadow.name)
        if self._in_flight[id(rollout)] >= rollout.shadow_concurrency:
            self._metrics.shadow_requests_total.labels(*labels, "dropped").inc()
            return
        self._in_flight[id(rollout)] += 1
        task = asyncio.get_running_loop().create_task(
            self._score(rollout, labels, shape, documents, live_body, send, shadow))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _score(self, rollout: Rollout[ModelPool], labels: tuple[str, str, str], shape: AnswerShape,
                     documents: int, live_body: bytes, send: Send, shadow: ModelPool) -> None:
        m = self._metrics
        try:
            reply = await send(shadow)
            if reply.status != 200:
                raise _ShadowRefused(f"the shadow pool answered {reply.status}")
            # In a worker thread: parsing and comparing a 1000-document pair is ~13 ms of CPU, which would stall
            # every live request on the event loop; a thread lets the loop run between GIL switches (5 ms).
            agreement = await asyncio.to_thread(_compare, shape, documents, live_body, reply.body,
                                                rollout.shadow_top_k)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # whatever the shadow did, the live request is long answered: count it
            m.shadow_requests_total.labels(*labels, "failed").inc()
            log.info("shadow request to %s failed: %s", labels[2], exc)
            return
        finally:
            self._in_flight[id(rollout)] -= 1
        for drift in agreement.drifts:
            m.shadow_score_drift.labels(*labels).observe(drift)
        if agreement.spearman is not None:
            m.shadow_spearman.labels(*labels).observe(agreement.spearman)
        if agreement.top_k_overlap is not None:
            m.shadow_top_k_overlap.labels(*labels).observe(agreement.top_k_overlap)
        m.shadow_requests_total.labels(*labels, "compared").inc()  # last: a test waiting on it sees the rest

    async def close(self) -> None:
        """Cancel the shadow requests still running (at shutdown nobody will read them)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _compare(shape: AnswerShape, documents: int, live_body: bytes, shadow_body: bytes, top_k: int) -> Agreement:
    """Both answers' scores compared; the shadow's checked first (the live one already was, by the pipeline)."""
    shadow_answer = parse_answer(shadow_body)
    check_answer(shape, shadow_answer, documents)
    return compare_scores(scores_of(shape, parse_answer(live_body)), scores_of(shape, shadow_answer), top_k)
