"""The gateway's model table: which upstream pool a request's ``model`` goes to.

Why a table and not the replicas' own name check: clients send the model names of the hosted APIs they were
written for (Cohere's ``rerank-v3.5``, Jina's ``jina-reranker-v2-base-multilingual``, infinity's
``default/not-specified``), and one gateway fronts several pools (a 0.6B and a 4B reranker, later an embedding
model). The table maps public names and aliases to pools; the replicas never see the client's name (the
upstream body's ``model`` is rewritten, :mod:`rerankd.gateway.upstream_body`).

Routing is keyed by task first (``rerank`` today; ``embed`` once issue 20's routes exist), then by name:

- a pool's name or one of its aliases routes to that pool, when the pool serves the request's task;
- no name, or (lenient, the default) a name the table does not know, routes to the task's default pool:
  ``--default-model`` when it is of that task, else the task's first pool in configuration order;
- in strict mode (``--strict-model-names``) an unknown name is a 404 listing what is served;
- a known name of another task (an embedding model on ``/v1/rerank``) is a 404 in either mode: that is a
  mistake, not a vendor name.

The ``--upstream`` pool of earlier versions has no name (:data:`UNNAMED`): it is reached only as a default
route, and requests reach its replicas with their ``model`` unchanged, as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rerankd.errors import ModelNotFoundError

__all__ = ["TASKS", "UNNAMED", "ModelTable", "PoolSettings", "Task", "parse_alias", "parse_pool"]

Task = Literal["rerank", "embed"]
TASKS: tuple[Task, ...] = ("rerank", "embed")

UNNAMED = ""
"""The name of the ``--upstream`` pool: routable only as a default."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,255}$")


class PoolSettings(BaseModel):
    """One upstream pool: the replicas that serve one model, and the public name clients reach it by."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="Public model name (what /v1/models lists and clients send).")
    task: Task = Field("rerank", description="What the replicas do: rerank or embed.")
    upstreams: list[str] = Field(..., min_length=1, description="Replica URLs, as for --upstream.")
    served_model: str | None = Field(
        None, description="The model name to send upstream; unset: the field is dropped (every single-model "
                          "replica accepts a request without it).")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(f"model name {value!r}: use letters, digits and . _ : / @ + - (at most 256, "
                             "starting with a letter or digit)")
        return value

    @field_validator("upstreams")
    @classmethod
    def _strip(cls, value: list[str]) -> list[str]:
        return [u.strip().rstrip("/") for u in value if u.strip()]


def parse_pool(text: str) -> dict[str, object]:
    """``[TASK:]NAME=URL[,URL...]`` (the ``--pool`` flag) as :class:`PoolSettings` fields."""
    name, sep, urls = text.partition("=")
    task, colon, bare = name.partition(":")
    if colon and task in TASKS:
        name = bare
    else:
        task = "rerank"
    if not sep or not name.strip() or not urls.strip():
        raise ValueError(f"--pool {text!r}: write [TASK:]NAME=URL[,URL...], e.g. "
                         "qwen3-reranker-4b=http://10.0.0.5:8001,http://10.0.0.6:8001")
    return {"name": name.strip(), "task": task, "upstreams": [u for u in urls.split(",") if u.strip()]}


def parse_alias(text: str) -> tuple[str, str]:
    """``ALIAS=MODEL`` (the ``--model-alias`` flag)."""
    alias, sep, target = text.partition("=")
    if not sep or not alias.strip() or not target.strip():
        raise ValueError(f"--model-alias {text!r}: write ALIAS=MODEL, e.g. rerank-v3.5=qwen3-reranker-4b")
    return alias.strip(), target.strip()


class _Pool(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def task(self) -> Task: ...


P = TypeVar("P", bound=_Pool)


@dataclass(frozen=True)
class ModelEntry(Generic[P]):
    """One routable public name: a pool's own name or an alias of it."""

    id: str
    pool: P
    alias: bool


class ModelTable(Generic[P]):
    """Public names and aliases → pools, a default pool per task, strict or lenient matching.

    Built once from checked settings (:meth:`GatewaySettings.check_runnable` refuses duplicates, unknown alias
    targets and an unknown default first); :meth:`route` answers every request, without I/O.
    """

    def __init__(self, pools: Sequence[P], aliases: dict[str, str], *, default_model: str | None = None,
                 strict: bool = False) -> None:
        self.pools = list(pools)
        self.strict = strict
        by_name = {p.name: p for p in self.pools if p.name != UNNAMED}
        self._entries: dict[str, ModelEntry[P]] = {n: ModelEntry(n, p, alias=False) for n, p in by_name.items()}
        for alias, target in aliases.items():
            self._entries[alias] = ModelEntry(alias, by_name[target], alias=True)
        self.defaults: dict[str, P] = {}
        chosen = self._entries[default_model].pool if default_model else None
        for pool in self.pools:
            if pool.task not in self.defaults:
                self.defaults[pool.task] = pool
        if chosen is not None:
            self.defaults[chosen.task] = chosen
        if chosen is None:
            unnamed = next((p for p in self.pools if p.name == UNNAMED), None)
            if unnamed is not None:  # the --upstream pool stays the default, as it was the only pool before
                self.defaults[unnamed.task] = unnamed

    @property
    def entries(self) -> list[ModelEntry[P]]:
        """Every public name, pools first (configuration order), then aliases."""
        return sorted(self._entries.values(), key=lambda e: (e.alias, self.pools.index(e.pool)))

    def find(self, model_id: str) -> ModelEntry[P] | None:
        return self._entries.get(model_id)

    def aliases_of(self, pool: P) -> list[str]:
        return [e.id for e in self.entries if e.alias and e.pool is pool]

    def route(self, task: Task, asked: str | None) -> P:
        """The pool for a ``task`` request naming ``asked`` (None or "": no name); 404 when there is none."""
        entry = self._entries.get(asked) if asked else None
        if entry is not None:
            if entry.pool.task == task:
                return entry.pool
            raise ModelNotFoundError(
                f"model {asked!r} is {_a(entry.pool.task)} model; {self._served(task)}", field="model")
        if asked and self.strict:
            raise ModelNotFoundError(f"model {asked!r} is not served by this gateway; {self._served(task)}",
                                     field="model")
        default = self.defaults.get(task)
        if default is None:
            raise ModelNotFoundError(f"this gateway serves no {task} model; {self._served(None)}", field="model")
        return default

    def _served(self, task: Task | None) -> str:
        names = [e.id for e in self.entries if task is None or e.pool.task == task]
        which = f"{task} models" if task else "models"
        return f"{which} served: {', '.join(names)}" if names else f"no {which} are served"


def _a(task: str) -> str:
    return {"rerank": "a rerank", "embed": "an embedding"}.get(task, f"a {task}")


def check_table(pools: Iterable[PoolSettings], unnamed_upstreams: Sequence[str], aliases: dict[str, str],
                default_model: str | None, strict: bool) -> list[str]:
    """What is wrong with a model table's configuration, one line per problem (empty when it can run)."""
    problems: list[str] = []
    names: dict[str, str] = {}
    owner: dict[str, str] = {u: "--upstream" for u in unnamed_upstreams}
    for pool in pools:
        if pool.name in names:
            problems.append(f"model name {pool.name!r} is given to two pools")
        names[pool.name] = pool.name
        for url in pool.upstreams:
            if url in owner:
                problems.append(f"upstream {url} is in two pools ({owner[url]} and {pool.name}); a replica serves "
                                "one model")
            owner[url] = pool.name
    for alias, target in aliases.items():
        if not _NAME.match(alias):
            problems.append(f"--model-alias {alias!r}: use letters, digits and . _ : / @ + -")
        if alias in names:
            problems.append(f"--model-alias {alias}={target}: {alias!r} is already a pool's name")
        if target not in names:
            known = ", ".join(names) or "none (give --pool NAME=URL)"
            problems.append(f"--model-alias {alias}={target}: no pool named {target!r}; pools: {known}")
    if default_model is not None and default_model not in names and default_model not in aliases:
        known = ", ".join([*names, *aliases]) or "none (give --pool NAME=URL)"
        problems.append(f"--default-model {default_model!r} is not a pool or an alias; known: {known}")
    if strict and unnamed_upstreams:
        problems.append("--strict-model-names needs every pool named: give --pool NAME=URL[,URL] instead of --upstream")
    return problems
