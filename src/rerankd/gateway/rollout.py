"""Rolling a new model or revision out through the model table: weighted canary routes and a shadow pool.

Why in the gateway: the gateway already owns the table from public names to pools, so a new revision is just
another pool (``qwen3-reranker-4b-rc``), and moving traffic onto it is a change of routing, not of clients.
A rollout is keyed by a pool's name (every request the table routes to that pool, by its name, an alias or
the default route, follows it) and says two things:

- ``weights``: how the pool's live requests are shared among pools (``{stable: 95, rc: 5}``). Per request
  the choice is a smooth weighted round robin, so any 20 consecutive requests at 95/5 send exactly one to the
  canary: exact in tests, and no unlucky streaks. ``sticky: key`` instead hashes the caller's key, so one
  client sees one model throughout (rankings do not flicker between pages), at the cost of a coarser split.
- ``shadow``: a pool that also scores a sample (``shadow-fraction``) of the live requests, after their
  answer, without the client waiting or seeing it (:mod:`rerankd.gateway.shadow`); the gateway exports how
  far the two answers agree.

Rollouts do not chain (a pool a rollout sends traffic to is not itself a rollout's model), and every pool
named must serve the model's task; :func:`check_rollouts` says what is wrong before the gateway starts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal

from pydantic import BaseModel, ConfigDict, Field

from rerankd.gateway.model_table import P, PoolSettings

__all__ = ["Rollout", "RolloutSettings", "ShadowSampler", "WeightedChooser", "check_rollouts"]


class RolloutSettings(BaseModel):
    """One model's rollout, as written under ``rollouts:`` in the gateway's YAML (dashes or underscores)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="The pool whose requests this rollout routes (its name).")
    weights: dict[str, float] = Field(
        default_factory=dict,
        description="Pool name -> share of the model's live requests (relative, e.g. 95 and 5). Empty: all stay "
                    "on the model's own pool.")
    sticky: Literal["none", "key"] = Field(
        "none", description="none: choose per request; key: one pool per caller key (a stable hash).")
    shadow: str | None = Field(None, description="A pool that also scores a sample of the live requests.")
    shadow_fraction: float = Field(1.0, gt=0, le=1, description="Share of live requests also sent to the shadow.")
    shadow_concurrency: int = Field(
        4, ge=1, description="Most shadow requests in flight; a sampled request past it is dropped, not queued.")
    shadow_top_k: int = Field(10, ge=1, description="k of the exported top-k overlap.")


def check_rollouts(rollouts: Sequence[RolloutSettings], pools: Iterable[PoolSettings]) -> list[str]:
    """What is wrong with the rollouts of a model table, one line per problem (empty when they can run)."""
    tasks = {p.name: p.task for p in pools}
    known = ", ".join(tasks) or "none (give named pools)"
    problems: list[str] = []
    models = [r.model for r in rollouts]
    for rollout in rollouts:
        where = f"rollouts[{rollout.model}]"
        if rollout.model not in tasks:
            problems.append(f"{where}: model {rollout.model!r} is not a pool's name; pools: {known}")
            continue
        if models.count(rollout.model) > 1:
            problems.append(f"{where}: the model has two rollouts; give one")
        task = tasks[rollout.model]
        for pool, weight in rollout.weights.items():
            if pool not in tasks:
                problems.append(f"{where}.weights: no pool named {pool!r}; pools: {known}")
            elif tasks[pool] != task:
                problems.append(f"{where}.weights: pool {pool!r} serves {tasks[pool]}, the model {task}")
            elif pool != rollout.model and pool in models:
                problems.append(f"{where}.weights: pool {pool!r} has a rollout of its own; rollouts do not chain")
            if weight < 0:
                problems.append(f"{where}.weights: {pool!r} has a negative weight ({weight:g})")
        if rollout.weights and sum(rollout.weights.values()) <= 0:
            problems.append(f"{where}.weights: give at least one pool a weight above 0")
        if rollout.shadow is not None:
            if rollout.shadow not in tasks:
                problems.append(f"{where}.shadow: no pool named {rollout.shadow!r}; pools: {known}")
            elif rollout.shadow == rollout.model:
                problems.append(f"{where}.shadow: a pool cannot shadow itself; name the new model's pool")
            elif task != "rerank" or tasks[rollout.shadow] != "rerank":
                problems.append(f"{where}.shadow: shadow scoring compares rerank answers; {rollout.model!r} and "
                                f"{rollout.shadow!r} must both be rerank pools")
    return problems


class WeightedChooser:
    """Smooth weighted round robin (nginx's): deterministic, and as even as the weights allow at every point.

    Each call adds every weight to its entry's credit, picks the highest credit and takes the total off it.
    At weights 95/5 every 20 calls pick the second exactly once; with ``sticky``, :meth:`for_key` maps a key
    to the same entry every time instead (its hash's place along the cumulative weights).
    """

    def __init__(self, weights: Sequence[float]) -> None:
        if not weights or sum(weights) <= 0 or min(weights) < 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
        self._weights = list(weights)
        self._total = sum(weights)
        self._credit = [0.0] * len(weights)

    def next(self) -> int:
        for i, weight in enumerate(self._weights):
            self._credit[i] += weight
        best = max(range(len(self._weights)), key=lambda i: (self._credit[i], -i))
        self._credit[best] -= self._total
        return best

    def for_key(self, key: str, salt: str = "") -> int:
        """The entry ``key`` always gets (the same on every gateway replica: a real hash, not ``hash()``)."""
        digest = hashlib.blake2b(f"{salt}\0{key}".encode(), digest_size=8).digest()
        point = int.from_bytes(digest, "big") / 2**64 * self._total
        running = 0.0
        for i, weight in enumerate(self._weights):
            running += weight
            if point < running and weight > 0:
                return i
        return max(i for i, w in enumerate(self._weights) if w > 0)


class ShadowSampler:
    """Says yes to exactly ``fraction`` of the calls, evenly spread (every 10th at 0.1), deterministically."""

    def __init__(self, fraction: float) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"shadow fraction must be in (0, 1], got {fraction}")
        self._fraction = fraction
        self._credit = 0.0

    def take(self) -> bool:
        self._credit += self._fraction
        if self._credit >= 1 - 1e-9:
            self._credit -= 1
            return True
        return False


@dataclass(eq=False)
class Rollout(Generic[P]):
    """A model pool's rollout at run time: which pool serves each live request, and the shadow and its sampler."""

    model: P
    choices: list[P]
    chooser: WeightedChooser | None
    sticky: bool
    shadow: P | None
    shadow_concurrency: int
    shadow_top_k: int
    sampler: ShadowSampler | None = field(default=None)

    @classmethod
    def build(cls, settings: RolloutSettings, by_name: Mapping[str, P]) -> Rollout[P]:
        """From checked settings (:func:`check_rollouts`) and the run-time pools by name."""
        weighted = [(by_name[name], w) for name, w in settings.weights.items()]
        shadow = by_name[settings.shadow] if settings.shadow is not None else None
        return cls(model=by_name[settings.model], choices=[p for p, _ in weighted],
                   chooser=WeightedChooser([w for _, w in weighted]) if weighted else None,
                   sticky=settings.sticky == "key", shadow=shadow, shadow_concurrency=settings.shadow_concurrency,
                   shadow_top_k=settings.shadow_top_k,
                   sampler=ShadowSampler(settings.shadow_fraction) if shadow is not None else None)

    @property
    def pools(self) -> list[P]:
        """Every pool that may answer this model's live requests (the model's own first)."""
        return [self.model, *(p for p in self.choices if p is not self.model)]

    def choose(self, key: str) -> P:
        """The pool that answers this live request of caller ``key``."""
        if self.chooser is None:
            return self.model
        index = self.chooser.for_key(key, self.model.name) if self.sticky else self.chooser.next()
        return self.choices[index]

    def shadow_for(self, live: P) -> P | None:
        """The shadow pool when this request (answered by ``live``) is one of the sample, else None."""
        if self.shadow is None or self.sampler is None or live is self.shadow:
            return None
        return self.shadow if self.sampler.take() else None
