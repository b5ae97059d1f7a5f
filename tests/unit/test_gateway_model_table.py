"""The gateway's model table: names and aliases to pools, default routes per task, strict and lenient matching,
and the configuration checks that keep a table from starting broken."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from rerankd.errors import ModelNotFoundError
from rerankd.gateway.model_table import UNNAMED, ModelTable, Task, parse_alias, parse_pool
from rerankd.gateway.settings import GatewayConfigError, GatewaySettings, load_yaml_config


@dataclass(eq=False)
class Pool:
    name: str
    task: Task = "rerank"


SMALL, BIG, EMBED = Pool("qwen3-reranker-0.6b"), Pool("qwen3-reranker-4b"), Pool("qwen3-embedding", "embed")
ALIASES = {"rerank-v3.5": "qwen3-reranker-4b", "text-embedding-3-small": "qwen3-embedding"}


def table(strict: bool = False, default: str | None = None, pools: list[Pool] | None = None) -> ModelTable[Pool]:
    return ModelTable(pools or [SMALL, BIG, EMBED], ALIASES, default_model=default, strict=strict)


@pytest.mark.parametrize("strict", [False, True])
def test_names_and_aliases_route_to_their_pool_in_both_modes(strict: bool) -> None:
    t = table(strict)
    assert t.route("rerank", "qwen3-reranker-4b") is BIG
    assert t.route("rerank", "rerank-v3.5") is BIG
    assert t.route("rerank", "qwen3-reranker-0.6b") is SMALL
    assert t.route("embed", "text-embedding-3-small") is EMBED
    assert t.route("rerank", None) is SMALL and t.route("rerank", "") is SMALL  # no name: the default
    assert t.route("embed", None) is EMBED  # each task has its own default


def test_lenient_sends_an_unknown_name_to_the_default_and_strict_lists_what_is_served() -> None:
    assert table().route("rerank", "default/not-specified") is SMALL
    assert table(default="rerank-v3.5").route("rerank", "jina-reranker-v2-base-multilingual") is BIG
    with pytest.raises(ModelNotFoundError) as refused:
        table(strict=True).route("rerank", "rerank-english-v3.0")
    assert refused.value.status_code == 404 and refused.value.field == "model"
    assert refused.value.message == ("model 'rerank-english-v3.0' is not served by this gateway; rerank models "
                                     "served: qwen3-reranker-0.6b, qwen3-reranker-4b, rerank-v3.5")


@pytest.mark.parametrize("strict", [False, True])
def test_a_model_of_another_task_is_a_404_even_when_lenient(strict: bool) -> None:
    with pytest.raises(ModelNotFoundError, match="'text-embedding-3-small' is an embedding model; rerank models"):
        table(strict).route("rerank", "text-embedding-3-small")
    with pytest.raises(ModelNotFoundError, match=re.escape("'rerank-v3.5' is a rerank model; embed models served: "
                                                           "qwen3-embedding, text-embedding-3-small")):
        table(strict).route("embed", "rerank-v3.5")


def test_a_task_without_a_pool_is_a_404_naming_what_is_served() -> None:
    with pytest.raises(ModelNotFoundError, match=re.escape("no embed model; models served: qwen3-reranker-0.6b")):
        ModelTable([SMALL], {}).route("embed", None)


def test_the_default_model_sets_its_tasks_default_only() -> None:
    t = table(default="qwen3-reranker-4b")
    assert t.defaults == {"rerank": BIG, "embed": EMBED}


def test_the_unnamed_upstream_pool_is_the_default_and_has_no_name() -> None:
    legacy = Pool(UNNAMED)
    t = ModelTable([BIG, legacy], {"rerank-v3.5": BIG.name})
    assert t.route("rerank", None) is legacy and t.route("rerank", "anything") is legacy
    assert t.route("rerank", "rerank-v3.5") is BIG
    assert [e.id for e in t.entries] == ["qwen3-reranker-4b", "rerank-v3.5"]  # nothing listed for it
    assert ModelTable([BIG, legacy], {}, default_model=BIG.name).route("rerank", None) is BIG


def test_entries_list_pools_in_order_then_aliases() -> None:
    t = table()
    assert [(e.id, e.pool.name, e.alias) for e in t.entries] == [
        ("qwen3-reranker-0.6b", "qwen3-reranker-0.6b", False), ("qwen3-reranker-4b", "qwen3-reranker-4b", False),
        ("qwen3-embedding", "qwen3-embedding", False), ("rerank-v3.5", "qwen3-reranker-4b", True),
        ("text-embedding-3-small", "qwen3-embedding", True)]
    assert t.aliases_of(BIG) == ["rerank-v3.5"] and t.aliases_of(SMALL) == []


def test_pool_and_alias_flags_parse() -> None:
    assert parse_pool("big=http://a:1,http://b:2") == {"name": "big", "task": "rerank",
                                                       "upstreams": ["http://a:1", "http://b:2"]}
    assert parse_pool("embed:e=http://a:1")["task"] == "embed"
    assert parse_pool("Qwen/Qwen3:4B=http://a:1")["name"] == "Qwen/Qwen3:4B"  # not a task: part of the name
    assert parse_alias(" rerank-v3.5 = big ") == ("rerank-v3.5", "big")
    for bad in ("big", "=http://a:1", "big="):
        with pytest.raises(ValueError, match="NAME=URL"):
            parse_pool(bad)
    with pytest.raises(ValueError, match="ALIAS=MODEL"):
        parse_alias("rerank-v3.5")


def settings(**fields: object) -> GatewaySettings:
    return GatewaySettings(**fields)  # type: ignore[arg-type]


def test_settings_take_pool_and_alias_flag_strings() -> None:
    s = settings(pools=["small=http://a:1", "big=http://b:1,http://c:1"], model_aliases=["rerank-v3.5=big"],
                 default_model="big")
    s.check_runnable()
    assert [(p.name, p.upstreams) for p in s.pools] == [("small", ["http://a:1"]),
                                                        ("big", ["http://b:1", "http://c:1"])]
    assert s.model_aliases == {"rerank-v3.5": "big"}


@pytest.mark.parametrize(("fields", "message"), [
    ({"pools": ["a=http://x:1", "a=http://y:1"]}, "model name 'a' is given to two pools"),
    ({"pools": ["a=http://x:1", "b=http://x:1"]}, "upstream http://x:1 is in two pools (a and b)"),
    ({"upstreams": ["http://x:1"], "pools": ["b=http://x:1"]}, "in two pools (--upstream and b)"),
    ({"pools": ["a=http://x:1"], "model_aliases": ["r=nope"]}, "no pool named 'nope'; pools: a"),
    ({"pools": ["a=http://x:1"], "model_aliases": ["a=a"]}, "'a' is already a pool's name"),
    ({"pools": ["a=http://x:1"], "default_model": "b"}, "--default-model 'b' is not a pool or an alias"),
    ({"upstreams": ["http://x:1"], "strict_model_names": True}, "--strict-model-names needs every pool named"),
    ({"pools": ["a=ftp://x:1"]}, "bad upstream URL 'ftp://x:1'"),
    ({}, "give --upstream URL or --pool NAME=URL"),
])
def test_broken_model_tables_are_refused_naming_the_problem(fields: dict[str, object], message: str) -> None:
    with pytest.raises(GatewayConfigError, match=re.escape(message)):
        settings(**fields).check_runnable()


def test_a_pool_name_must_be_a_name() -> None:
    with pytest.raises(ValueError, match="model name 'bad name'"):
        settings(pools=["bad name=http://x:1"])


def test_the_yaml_file_takes_pools_as_mappings_or_strings_and_aliases_as_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("""
pools:
  - name: qwen3-reranker-4b
    upstreams: [http://10.0.0.5:8001, http://10.0.0.6:8001]
    served-model: Qwen3-Reranker-4B
  - qwen3-reranker-0.6b=http://10.0.0.7:8001
model-aliases: {rerank-v3.5: qwen3-reranker-4b}
default-model: qwen3-reranker-0.6b
strict-model-names: true
""")
    loaded = GatewaySettings(**load_yaml_config(path))
    loaded.check_runnable()
    assert [(p.name, p.served_model) for p in loaded.pools] == [("qwen3-reranker-4b", "Qwen3-Reranker-4B"),
                                                                ("qwen3-reranker-0.6b", None)]
    assert loaded.pools[0].upstreams == ["http://10.0.0.5:8001", "http://10.0.0.6:8001"]
    assert loaded.model_aliases == {"rerank-v3.5": "qwen3-reranker-4b"} and loaded.strict_model_names
