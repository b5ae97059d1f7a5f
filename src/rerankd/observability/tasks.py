"""Which task (``rerank`` or ``embed``) a route serves: the ``task`` label of the request metrics.

Why a label and not only ``route``: one gateway (and one dashboard) serves both pools, and a panel, an alert or a
bill per task must not need the list of every API's path for each task. The mapping lives here, below the server
and the gateway, so both label their series from one list.
"""

from __future__ import annotations

__all__ = ["EMBED_ROUTES", "NO_TASK", "RERANK_ROUTES", "TASKS", "task_of_route"]

RERANK_ROUTES = frozenset({"/v1/rerank", "/v2/rerank", "/rerank", "/v1/score", "/score"})
EMBED_ROUTES = frozenset({"/v1/embeddings", "/embed", "/v2/embed", "/v1/embed"})
TASKS = ("rerank", "embed")
NO_TASK = ""  # routes of neither task (/health, /metrics, /v1/models, …): the label is absent in PromQL


def task_of_route(route: str) -> str:
    """``rerank`` or ``embed`` for a scoring or embedding route (a request path or its route label), else ``""``."""
    if route in RERANK_ROUTES:
        return "rerank"
    if route in EMBED_ROUTES:
        return "embed"
    return NO_TASK
