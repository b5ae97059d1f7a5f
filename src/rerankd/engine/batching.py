"""The micro-batch cut rule: which waiting rows the next forward pass takes.

Why a pure function apart from the batcher: the rule decides a forward pass's padding and peak memory,
so it must be testable without an event loop, and the offline benchmarks (``bench/``) must time the
very batches the server forms, not a copy of the rule that can drift from it.

The rule, in the order the server has always applied it:

* Requests are offered rows in the order given: the batcher gives :func:`service_order`: by priority
  (lower first, strictly), then requests on their first turn before requests already under way, each
  round robin over tenants and, within a tenant, over its requests; so a request that arrives behind a
  large one is in the next batch instead of waiting for all of the large one's rows. A request's rows are
  taken in :func:`dispatch_order`
  (shortest tail first), so the rows of one batch have similar lengths and little padding.
* A row is admitted while the batch it would make costs at most ``max_batch_tokens``: the padded rows,
  ``rows × width`` with ``width`` the widest prompt (shared prefix + tail) so far, plus the shared prefix
  of each earlier request in the batch once, plus the row's own request's prefix when it is that
  request's first row of the batch.
* The first row of a batch is always admitted, whatever it costs: a prompt longer than the budget
  still runs, alone (the backend bounds its memory by chunking).
* The cut may fall inside a request; its remaining rows wait for its next turn. A request later in
  the order never jumps ahead of an earlier one to fill the budget.
* A batch that holds rows of a request on its first turn takes rows of requests already under way only
  while it costs at most ``fill_tokens``: the first-turn request (another tenant's 3-document one) runs in
  a short pass instead of one filled with a bulk caller's rows up to the budget, and the bulk rows go in
  the next pass. Requests on their first turn are not limited by it: they fill the budget as before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Turn", "WaitingRows", "cut_batch", "dispatch_order", "service_order"]


def dispatch_order(tails: Sequence[Sequence[int]]) -> list[int]:
    """The indices of ``tails``, shortest first (ties in request order): the order rows are dispatched."""
    return sorted(range(len(tails)), key=lambda i: len(tails[i]))


@dataclass(frozen=True)
class Turn:
    """One waiting request as the fairness rule sees it."""

    tenant: str | None
    """Who asks (the gateway's ``X-Rerankd-Tenant``); ``None`` for every request that does not say."""
    last_served: int
    """The number of the last batch that took rows of this request; -1 before its first."""
    arrived: int
    """Arrival order among all requests."""
    priority: int = 0
    """Lower is served first (vLLM's meaning of a request's ``priority``); 0 unless the request says."""


def service_order(turns: Sequence[Turn], tenant_served: Mapping[str | None, int]) -> list[int]:
    """The indices of ``turns`` in the order the next cut offers them rows.

    Classes first: by ``priority``, lower first and strictly (a class is offered rows only after every
    class before it), then, within a priority, requests never served (``last_served`` -1) before requests
    under way: a request's first turn waits for no other request's rows.

    Within a class, round robin, least recently served first: tenants take turns by the last batch that
    served any of their requests (``tenant_served``, -1 for one never served), ties by their earliest
    arrival; the order interleaves them: every tenant's first request, then every tenant's second, and so
    on. A tenant's own requests are ordered the same way by their own ``last_served``. So a tenant with 50
    requests waiting gets one share, as a tenant with one does.
    """
    classes: dict[tuple[int, bool], list[int]] = {}
    for i, turn in enumerate(turns):
        classes.setdefault((turn.priority, turn.last_served >= 0), []).append(i)
    return [i for key in sorted(classes) for i in _round_robin(turns, classes[key], tenant_served)]


def _round_robin(turns: Sequence[Turn], members: list[int], tenant_served: Mapping[str | None, int]) -> list[int]:
    by_tenant: dict[str | None, list[int]] = {}
    for i in members:
        by_tenant.setdefault(turns[i].tenant, []).append(i)
    lines = [sorted(ix, key=lambda i: (turns[i].last_served, turns[i].arrived)) for ix in by_tenant.values()]
    lines.sort(key=lambda ix: (tenant_served.get(turns[ix[0]].tenant, -1), min(turns[i].arrived for i in ix)))
    return [line[rank] for rank in range(max(map(len, lines), default=0)) for line in lines if rank < len(line)]


@dataclass(frozen=True)
class WaitingRows:
    """One request as the cut sees it: token counts only, nothing to compute."""

    prefix: int
    """Tokens of the shared prefix every row of the request starts with."""
    lengths: Sequence[int]
    """Every tail's length in tokens, in dispatch order."""
    start: int = 0
    """How many of ``lengths`` earlier batches took already."""

    @property
    def left(self) -> int:
        return len(self.lengths) - self.start


def cut_batch(queue: Iterable[WaitingRows], max_batch_tokens: int, fill_tokens: int | None = None) -> list[int]:
    """How many rows the next batch takes from each request of ``queue``, in queue order.

    ``fill_tokens`` (default ``max_batch_tokens``): what the batch may cost with rows of requests under way
    (``start`` > 0) once it holds rows of a request on its first turn.

    The answer stops at the request the cut falls in (or the queue's end): requests after it give no
    row and are not read, so ``queue`` may be a lazy iterable. A request with no rows left gets 0 and
    is passed over. What each request keeps for later is ``left`` minus its count.
    """
    counts: list[int] = []
    rows = 0
    width = 0
    prefixes = 0  # the shared prefixes of the requests before the current one, once each
    first_turn = False  # whether the batch holds rows of a request on its first turn
    for request in queue:
        budget = max_batch_tokens
        if first_turn and request.start > 0 and fill_tokens is not None:
            budget = min(budget, fill_tokens)
        taken = 0
        while taken < request.left:
            new_width = max(width, request.lengths[request.start + taken] + request.prefix)
            cost = (rows + 1) * new_width + prefixes + (0 if taken else request.prefix)
            if rows > 0 and cost > budget:
                break
            taken += 1
            rows += 1
            width = new_width
        counts.append(taken)
        if taken:
            prefixes += request.prefix
            first_turn = first_turn or request.start == 0
        if taken < request.left:
            break  # the budget is reached inside this request
    return counts
