"""The gateway's upstream pools at run time: one per model, each with its own replicas, breakers and retries.

Why one :class:`~rerankd.gateway.pool.UpstreamPool`, :class:`~rerankd.gateway.forward.Forwarder` and
:class:`~rerankd.gateway.distribute.Distributor` per pool: balancing, failover and splitting only make sense
among replicas that serve the same model, and a sick pool must not spend another pool's retry budget.
:class:`PoolSet` is what the probes, ``/admin/upstreams`` and the metrics see: every replica of every pool.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from rerankd.gateway.distribute import Distributor
from rerankd.gateway.forward import Forwarder
from rerankd.gateway.model_table import UNNAMED, ModelTable, Task
from rerankd.gateway.pool import Upstream, UpstreamPool
from rerankd.gateway.rollout import Rollout
from rerankd.observability.gateway_metrics import SHADOW_OUTCOMES, GatewayMetrics

__all__ = ["ModelPool", "PoolSet"]


@dataclass(eq=False)
class ModelPool:
    """One model's replicas and the components that send to them.

    ``name`` is the public model name (:data:`~rerankd.gateway.model_table.UNNAMED` for the ``--upstream``
    pool); ``served_model`` the name sent upstream (None: the request's ``model`` is dropped, or, for the
    unnamed pool, left as the client sent it).
    """

    name: str
    task: Task
    served_model: str | None
    replicas: UpstreamPool
    forwarder: Forwarder
    distributor: Distributor

    @property
    def named(self) -> bool:
        return self.name != UNNAMED

    @property
    def label(self) -> str:
        """How logs, ``/info`` and ``/admin/upstreams`` name the pool."""
        return self.name if self.named else "(--upstream)"


class PoolSet:
    """Every pool, the model table that routes to them, and the rollouts that share a pool's live traffic."""

    def __init__(self, pools: list[ModelPool], table: ModelTable[ModelPool],
                 rollouts: list[Rollout[ModelPool]] | None = None, metrics: GatewayMetrics | None = None) -> None:
        self.pools = pools
        self.table = table
        self.rollouts: dict[ModelPool, Rollout[ModelPool]] = {r.model: r for r in rollouts or []}
        self.created = int(time.time())  # the ``created`` of the model objects /v1/models lists
        self._metrics = metrics
        if metrics is not None:  # at 0 from the start: rate() and the rollout's dashboards show 0, not "no data"
            for pool in pools:
                metrics.pool_requests_total.labels(pool.label, pool.label)
            for rollout in self.rollouts.values():
                for pool in rollout.pools:
                    metrics.pool_requests_total.labels(rollout.model.label, pool.label)
                    if rollout.shadow is not None and pool is not rollout.shadow:
                        for outcome in SHADOW_OUTCOMES:
                            metrics.shadow_requests_total.labels(rollout.model.name, pool.name, rollout.shadow.name,
                                                                 outcome)

    def route(self, task: Task, asked: str | None, key: str) -> tuple[ModelPool, Rollout[ModelPool] | None]:
        """The pool that answers a request of caller ``key`` (the table's choice, or the pool its rollout
        picks), and that rollout; a 404 when the table routes nowhere (:meth:`ModelTable.route`)."""
        routed = self.table.route(task, asked)
        rollout = self.rollouts.get(routed)
        pool = rollout.choose(key) if rollout is not None else routed
        if self._metrics is not None:
            self._metrics.pool_requests_total.labels(routed.label, pool.label).inc()
        return pool, rollout

    @property
    def upstreams(self) -> list[Upstream]:
        """Every replica of every pool (a replica is in one pool only: the settings check it)."""
        return [u for p in self.pools for u in p.replicas.upstreams]

    def available_count(self) -> int:
        return sum(p.replicas.available_count() for p in self.pools)

    async def start(self) -> None:
        await asyncio.gather(*(p.replicas.start() for p in self.pools))

    async def close(self) -> None:
        for pool in self.pools:
            await pool.replicas.close()

    def snapshot(self) -> list[dict[str, Any]]:
        """Each replica's state with its pool's name, for ``/admin/upstreams``."""
        return [{"pool": p.label, "task": p.task, **row} for p in self.pools for row in p.replicas.snapshot()]

    def describe(self) -> list[dict[str, Any]]:
        """Each pool for ``/info``: its name, task, aliases, whether it is a default route, its replicas."""
        defaults = {id(p) for p in self.table.defaults.values()}
        return [{"id": p.name if p.named else None, "task": p.task, "aliases": self.table.aliases_of(p),
                 "default": id(p) in defaults, "replicas": len(p.replicas.upstreams),
                 "healthy_replicas": p.replicas.available_count()} for p in self.pools]
