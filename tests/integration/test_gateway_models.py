"""The gateway's model table through a real gateway process: pools by name and alias, the default route, strict
mode, per-pool failover and splitting, ``/v1/models``, ``/info``, the ledger's model, and per-key priorities.

Routing is the gateway's own behaviour, so most replicas here are real HTTP servers that record what they were
sent (the body's ``model`` and ``priority`` are what the gateway rewrote) and answer in rerankd's shapes. One test
puts a real ``rerankd serve`` (which answers 404 for a model name it does not serve) behind an alias.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from sqlalchemy import select, text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from rerankd.cli import cli
from rerankd.gateway.db import UsageRecord, create_engine_for
from support import Proc, ServerThread, spawn_gateway, spawn_replica, wait_until

pytestmark = pytest.mark.timeout(240)

ADMIN = "models-admin-secret"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


class RecordingReplica:
    """A replica serving ``served`` that records every scoring body it gets and answers in rerankd's shapes."""

    def __init__(self, served: str) -> None:
        self.served = served
        self.bodies: list[dict[str, Any]] = []

        async def rerank(request: Request) -> JSONResponse:
            body = json.loads(await request.body())
            self.bodies.append(body)
            if "texts" in body:  # TEI shape
                return JSONResponse([{"index": i, "score": 0.5} for i in range(len(body["texts"]))],
                                    headers={"x-prompt-tokens": "3"})
            results = [{"index": i, "relevance_score": 1.0 / (i + 1)} for i in range(len(body["documents"]))]
            return JSONResponse({"id": "x", "model": served, "results": results,
                                 "usage": {"prompt_tokens": 3, "total_tokens": 3}})

        async def score(request: Request) -> JSONResponse:
            body = json.loads(await request.body())
            self.bodies.append(body)
            pairs = len(body["text_2"]) if isinstance(body["text_2"], list) else 1
            return JSONResponse({"id": "x", "object": "list", "model": served, "usage": {"prompt_tokens": 3},
                                 "data": [{"index": i, "object": "score", "score": 0.5} for i in range(pairs)]})

        async def models(_: Request) -> JSONResponse:
            return JSONResponse({"object": "list", "data": [{"id": served, "object": "model", "created": 1,
                                                             "owned_by": "rerankd"}]})

        async def ready(_: Request) -> JSONResponse:
            return JSONResponse({"status": "ready"})

        routes = [Route(p, rerank, methods=["POST"]) for p in ("/v1/rerank", "/v2/rerank", "/rerank")]
        self.server = ServerThread(Starlette(routes=[*routes, Route("/v1/score", score, methods=["POST"]),
                                                     Route("/v1/models", models), Route("/ready", ready)]),
                                   what=f"replica of {served}")
        self.url = self.server.url

    def start(self) -> RecordingReplica:
        self.server.start()
        return self

    def last(self) -> dict[str, Any]:
        return self.bodies[-1]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_key(gateway: str, name: str, **fields: Any) -> str:
    created = httpx.post(f"{gateway}/admin/keys", json={"name": name, **fields}, headers=bearer(ADMIN))
    assert created.status_code == 201, created.text
    return str(created.json()["key"])


def gateway_proc(tmp: Path, *flags: str, upstreams: list[str] | None = None, database_url: str | None = None) -> Proc:
    return spawn_gateway(tmp, upstreams or [], "--database-url", database_url or f"sqlite:///{tmp / 'gw.db'}",
                         "--admin-key", ADMIN, "--health-interval", "0.2",
                         *flags).wait_ready(60)


@pytest.fixture(scope="module")
def replicas() -> Iterator[dict[str, RecordingReplica]]:
    """A 0.6B pool of one replica and a 4B pool of two."""
    made = {"small": RecordingReplica("Qwen3-Reranker-0.6B"), "big-a": RecordingReplica("Qwen3-Reranker-4B"),
            "big-b": RecordingReplica("Qwen3-Reranker-4B")}
    with ExitStack() as stack:
        for replica in made.values():
            replica.start()
            stack.callback(replica.server.stop)
        yield made


@pytest.fixture(scope="module")
def gateway(replicas: dict[str, RecordingReplica], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("models-gateway")
    proc = gateway_proc(tmp, "--pool", f"qwen3-reranker-0.6b={replicas['small'].url}",
                        "--pool", f"qwen3-reranker-4b={replicas['big-a'].url},{replicas['big-b'].url}",
                        "--model-alias", "rerank-v3.5=qwen3-reranker-4b",
                        "--model-alias", "rerank-english-v3.0=qwen3-reranker-4b", "--split-threshold", "4")
    try:
        yield proc.url
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def key(gateway: str) -> str:
    return make_key(gateway, "models-user")


def rerank(gateway: str, key: str, path: str = "/v1/rerank", **body: Any) -> httpx.Response:
    return httpx.post(f"{gateway}{path}", json={"query": "q", "documents": ["a", "b"], **body}, headers=bearer(key),
                      timeout=30)


def served_by(replicas: dict[str, RecordingReplica], send: Any) -> tuple[str, dict[str, Any]]:
    """Which replica got the one body ``send()`` caused, and that body."""
    before = {name: len(r.bodies) for name, r in replicas.items()}
    answer = send()
    assert answer.status_code == 200, answer.text
    got = [name for name, r in replicas.items() if len(r.bodies) > before[name]]
    assert len(got) == 1, got
    return got[0], replicas[got[0]].last()


def test_names_aliases_and_the_default_route_reach_their_pool_with_the_model_dropped(
        gateway: str, key: str, replicas: dict[str, RecordingReplica]) -> None:
    for asked, pool in (("qwen3-reranker-4b", "big"), ("rerank-v3.5", "big"), ("rerank-english-v3.0", "big"),
                        ("qwen3-reranker-0.6b", "small"), (None, "small"),
                        ("default/not-specified", "small"),  # lenient: an unknown name takes the default
                        ("jina-reranker-v2-base-multilingual", "small")):
        fields: dict[str, Any] = {} if asked is None else {"model": asked}
        name, body = served_by(replicas, lambda f=fields: rerank(gateway, key, **f))
        assert name.startswith(pool), (asked, name)
        assert "model" not in body, body  # the replicas never see a public name they may not serve
        assert body["documents"] == ["a", "b"]
    name, body = served_by(replicas, lambda: rerank(gateway, key, "/v2/rerank", model="rerank-v3.5", top_n=1))
    assert name.startswith("big") and body["top_n"] == 1
    name, _ = served_by(replicas, lambda: httpx.post(f"{gateway}/rerank", json={"query": "q", "texts": ["a"]},
                                                     headers=bearer(key)))
    assert name == "small"  # TEI names no model: the default
    name, body = served_by(replicas, lambda: httpx.post(
        f"{gateway}/v1/score", json={"model": "rerank-v3.5", "text_1": "q", "text_2": ["a", "b"]},
        headers=bearer(key)))
    assert name.startswith("big") and "model" not in body


def test_a_split_stays_inside_its_pool(gateway: str, key: str, replicas: dict[str, RecordingReplica]) -> None:
    before = {name: len(r.bodies) for name, r in replicas.items()}
    documents = [f"doc {i}" for i in range(8)]
    answer = rerank(gateway, key, model="rerank-v3.5", documents=documents)
    assert answer.status_code == 200, answer.text
    assert sorted(r["index"] for r in answer.json()["results"]) == list(range(8))
    grew = {name: len(r.bodies) - before[name] for name, r in replicas.items()}
    assert grew == {"small": 0, "big-a": 1, "big-b": 1}  # split over the 4B pool's two replicas, and only those
    assert all("model" not in replicas[n].last() for n in ("big-a", "big-b"))


def test_models_are_listed_and_each_one_answers(gateway: str, key: str) -> None:
    listing = httpx.get(f"{gateway}/v1/models", headers=bearer(key))
    assert listing.status_code == 200, listing.text
    data = listing.json()["data"]
    assert [(m["id"], m["pool"], m["task"], m["object"]) for m in data] == [
        ("qwen3-reranker-0.6b", "qwen3-reranker-0.6b", "rerank", "model"),
        ("qwen3-reranker-4b", "qwen3-reranker-4b", "rerank", "model"),
        ("rerank-v3.5", "qwen3-reranker-4b", "rerank", "model"),  # aliases in the order they were given
        ("rerank-english-v3.0", "qwen3-reranker-4b", "rerank", "model")]
    one = httpx.get(f"{gateway}/v1/models/rerank-v3.5", headers=bearer(key))
    assert one.status_code == 200 and one.json() == data[2]
    missing = httpx.get(f"{gateway}/v1/models/default/not-specified", headers=bearer(key))
    assert missing.status_code == 404, missing.text
    error = missing.json()["error"]
    assert error["type"] == "model_not_found"
    assert "'default/not-specified' is not served by this gateway; models served: qwen3-reranker-0.6b" in error[
        "message"]
    assert httpx.get(f"{gateway}/v1/models/rerank-v3.5").status_code == 401


def test_info_names_the_pools_their_aliases_tasks_and_replicas(gateway: str) -> None:
    info = httpx.get(f"{gateway}/info").json()
    assert info["models"] == [
        {"id": "qwen3-reranker-0.6b", "task": "rerank", "aliases": [], "default": True, "replicas": 1,
         "healthy_replicas": 1},
        {"id": "qwen3-reranker-4b", "task": "rerank", "aliases": ["rerank-v3.5", "rerank-english-v3.0"],
         "default": False, "replicas": 2, "healthy_replicas": 2}]
    assert info["default_models"] == {"rerank": "qwen3-reranker-0.6b"} and info["strict_model_names"] is False
    assert info["replicas"] == 3 and info["role"] == "gateway"


def test_the_ledger_records_the_pool_that_served(gateway: str, replicas: dict[str, RecordingReplica],
                                                 tmp_path_factory: pytest.TempPathFactory) -> None:
    ledger_key = make_key(gateway, "ledger-model")
    for asked in ("rerank-v3.5", "nonsense-name"):
        assert rerank(gateway, ledger_key, model=asked).status_code == 200
    key_id = next(k["id"] for k in httpx.get(f"{gateway}/admin/keys", headers=bearer(ADMIN)).json()
                  if k["name"] == "ledger-model")
    database = next(tmp_path_factory.getbasetemp().glob("models-gateway*/gw.db"))

    def rows() -> list[tuple[str, int]]:
        with sqlite3.connect(database) as db:
            return db.execute("SELECT model, status FROM usage_records WHERE key_id = ? ORDER BY id",
                              (key_id,)).fetchall()

    wait_until(lambda: len(rows()) == 2, 15, "two usage rows")
    assert rows() == [("qwen3-reranker-4b", 200), ("qwen3-reranker-0.6b", 200)]


def test_strict_mode_answers_404_listing_what_is_served(replicas: dict[str, RecordingReplica],
                                                        tmp_path: Path) -> None:
    proc = gateway_proc(tmp_path, "--pool", f"qwen3-reranker-4b={replicas['big-a'].url}",
                        "--model-alias", "rerank-v3.5=qwen3-reranker-4b", "--strict-model-names")
    try:
        key = make_key(proc.url, "strict")
        refused = rerank(proc.url, key, model="rerank-english-v3.0")
        assert refused.status_code == 404, refused.text
        error = refused.json()["error"]
        assert (error["type"], error["field"]) == ("model_not_found", "model")
        assert error["message"] == ("model 'rerank-english-v3.0' is not served by this gateway; rerank models "
                                    "served: qwen3-reranker-4b, rerank-v3.5")
        assert rerank(proc.url, key, model="rerank-v3.5").status_code == 200
        assert rerank(proc.url, key).status_code == 200  # no name: the default, strict or not
        assert httpx.get(f"{proc.url}/info").json()["strict_model_names"] is True
        wait_until(lambda: _statuses(tmp_path / "gw.db") == [404, 200, 200], 15, "three usage rows")
    finally:
        proc.stop()


def _statuses(database: Path) -> list[int]:
    with sqlite3.connect(database) as db:
        return [s for (s,) in db.execute("SELECT status FROM usage_records ORDER BY id")]


def test_a_dead_pool_fails_alone_and_never_spills_into_another(tmp_path: Path) -> None:
    small, big = RecordingReplica("small").start(), RecordingReplica("big").start()
    try:
        proc = gateway_proc(tmp_path, "--pool", f"small={small.url}", "--pool", f"big={big.url}")
        try:
            key = make_key(proc.url, "isolated")
            assert rerank(proc.url, key, model="small").status_code == 200
            small.server.stop()
            wait_until(lambda: httpx.get(f"{proc.url}/info").json()["models"][0]["healthy_replicas"] == 0, 20,
                       "the gateway to see the small pool down")
            before = len(big.bodies)
            down = rerank(proc.url, key, model="small")
            assert down.status_code == 503, down.text  # not answered by the big pool's replica
            assert len(big.bodies) == before
            assert rerank(proc.url, key, model="big").status_code == 200
            assert httpx.get(f"{proc.url}/ready").status_code == 200  # a pool can still serve
            upstreams = httpx.get(f"{proc.url}/admin/upstreams", headers=bearer(ADMIN)).json()
            assert [(u["pool"], u["healthy"]) for u in upstreams] == [("small", False), ("big", True)]
        finally:
            proc.stop()
    finally:
        big.server.stop()


def test_the_upstream_pool_passes_the_model_on_and_lists_what_its_replicas_list(tmp_path: Path) -> None:
    """``--upstream`` alone is the gateway of earlier versions: bodies unchanged, /v1/models from a replica.
    Beside a named pool it stays the default route."""
    legacy, big = RecordingReplica("tiny-reranker").start(), RecordingReplica("big").start()
    try:
        proc = gateway_proc(tmp_path, upstreams=[legacy.url])
        try:
            key = make_key(proc.url, "legacy")
            assert rerank(proc.url, key, model="rerank-v3.5").status_code == 200
            assert legacy.last()["model"] == "rerank-v3.5"  # as sent: the replica decides, as before
            listing = httpx.get(f"{proc.url}/v1/models", headers=bearer(key))
            assert [m["id"] for m in listing.json()["data"]] == ["tiny-reranker"]
            assert httpx.get(f"{proc.url}/v1/models/tiny-reranker", headers=bearer(key)).json()["id"] == \
                "tiny-reranker"
            assert httpx.get(f"{proc.url}/info").json()["models"] == [
                {"id": None, "task": "rerank", "aliases": [], "default": True, "replicas": 1,
                 "healthy_replicas": 1}]
        finally:
            proc.stop()
        (tmp_path / "mixed").mkdir()
        proc = gateway_proc(tmp_path / "mixed", "--pool", f"big={big.url}", upstreams=[legacy.url])
        try:
            key = make_key(proc.url, "mixed")
            assert rerank(proc.url, key).status_code == 200 and "model" not in legacy.last()
            assert rerank(proc.url, key, model="big").status_code == 200 and "model" not in big.last()
            assert [m["id"] for m in httpx.get(f"{proc.url}/v1/models", headers=bearer(key)).json()["data"]] == [
                "big", "tiny-reranker"]
        finally:
            proc.stop()
    finally:
        legacy.server.stop()
        big.server.stop()


def test_a_served_model_from_the_config_file_is_what_the_replicas_get(tmp_path: Path) -> None:
    big = RecordingReplica("Qwen3-Reranker-4B").start()
    try:
        config = tmp_path / "gateway.yaml"
        config.write_text(f"pools:\n  - name: qwen3-reranker-4b\n    served-model: Qwen3-Reranker-4B\n"
                          f"    upstreams: [{big.url}]\nmodel-aliases:\n  rerank-v3.5: qwen3-reranker-4b\n")
        proc = gateway_proc(tmp_path, "--config", str(config))
        try:
            key = make_key(proc.url, "served")
            for asked in ("rerank-v3.5", "Qwen3-Reranker-4B", "anything"):
                assert rerank(proc.url, key, model=asked).status_code == 200
                assert big.last()["model"] == "Qwen3-Reranker-4B"
            assert rerank(proc.url, key).status_code == 200 and "model" not in big.last()  # none sent, none added
        finally:
            proc.stop()
    finally:
        big.server.stop()


@pytest.mark.parametrize("flags", [
    ["--pool", "nourl"], ["--pool", "a=http://x:1", "--model-alias", "r=b"],
    ["--upstream", "http://x:1", "--strict-model-names"], ["--pool", "a=http://x:1", "--pool", "b=http://x:1"]])
def test_a_broken_model_table_stops_the_gateway_with_the_reason(flags: list[str], tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["gateway", *flags, "--database-url", f"sqlite:///{tmp_path / 'x.db'}"])
    assert result.exit_code == 2, result.output
    assert any(fragment in result.output for fragment in (
        "NAME=URL", "no pool named 'b'", "--strict-model-names needs every pool named", "is in two pools")), \
        result.output


# ------------------------------------------------------------------------------------------ key priorities


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty gateway database: a SQLite file, or a PostgreSQL database made for this test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'keys.db'}"
        return
    name = f"rerankd_models_{uuid.uuid4().hex[:10]}"

    async def admin(statement: str) -> None:
        engine = create_engine_for(PG_ADMIN_URL).execution_options(isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(statement))
        finally:
            await engine.dispose()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except OSError as exc:
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_a_keys_priority_is_the_default_and_the_floor_of_what_its_requests_send(
        database_url: str, tmp_path: Path) -> None:
    replica = RecordingReplica("r").start()
    try:
        proc = gateway_proc(tmp_path, "--pool", f"r={replica.url}", "--split-threshold", "2",
                            database_url=database_url)
        try:
            urgent = make_key(proc.url, "urgent")  # no priority: the client's value goes on as sent
            batch = make_key(proc.url, "batch", priority=10)
            made = CliRunner().invoke(cli, ["keys", "create", "--name", "cli-batch", "--priority", "20", "--json",
                                            "--database-url", database_url])
            assert made.exit_code == 0, made.output
            cli_batch = json.loads(made.output)
            assert cli_batch["priority"] == 20
            for key, sent, expected in ((batch, None, 10), (batch, 15, 15), (batch, 3, 10), (batch, -100, 10),
                                        (cli_batch["key"], None, 20), (cli_batch["key"], 25, 25),
                                        (urgent, None, None), (urgent, -5, -5)):
                fields: dict[str, Any] = {} if sent is None else {"priority": sent}
                assert rerank(proc.url, key, **fields).status_code == 200
                assert replica.last().get("priority") == expected, (key, sent)
            before = len(replica.bodies)
            assert rerank(proc.url, batch, documents=["a", "b", "c", "d"], priority=12).status_code == 200
            parts = replica.bodies[before:]
            assert len(parts) == 1 and parts[0]["priority"] == 12  # one replica: not split
            bad = rerank(proc.url, batch, priority="high")
            assert bad.status_code == 422 and bad.json()["error"]["field"] == "priority", bad.text
            shown = {k["name"]: k["priority"] for k in httpx.get(f"{proc.url}/admin/keys",
                                                                  headers=bearer(ADMIN)).json()}
            assert shown == {"urgent": None, "batch": 10, "cli-batch": 20}
            too_big = httpx.post(f"{proc.url}/admin/keys", json={"name": "x", "priority": 2**31},
                                 headers=bearer(ADMIN))
            assert too_big.status_code == 422 and "2147483647" in too_big.text, too_big.text
            refused = CliRunner().invoke(cli, ["keys", "create", "--name", "y", "--priority", str(2**31),
                                               "--database-url", database_url])
            assert refused.exit_code == 2 and "-2147483648<=x<=2147483647" in refused.output, refused.output
            listing = CliRunner().invoke(cli, ["keys", "list", "--json", "--database-url", database_url])
            assert {json.loads(line)["name"]: json.loads(line)["priority"]
                    for line in listing.output.splitlines()} == shown
            wait_until(lambda: len(_ledger_models(database_url)) == 10, 20, "a usage row per scoring request")
            models = list(_ledger_models(database_url))
            # The 422 is refused by body validation (`priority` is a field of the rerank shape) before routing.
            assert models.count("") == 1 and set(models) == {"r", ""}, models
        finally:
            proc.stop()
    finally:
        replica.server.stop()


def test_a_splits_parts_all_carry_the_priority(tmp_path: Path) -> None:
    a, b = RecordingReplica("r").start(), RecordingReplica("r").start()
    try:
        proc = gateway_proc(tmp_path, "--pool", f"r={a.url},{b.url}", "--split-threshold", "2")
        try:
            batch = make_key(proc.url, "batch", priority=10)
            for sent, expected in ((None, 10), (30, 30), (1, 10)):
                fields: dict[str, Any] = {} if sent is None else {"priority": sent}
                before = len(a.bodies), len(b.bodies)
                assert rerank(proc.url, batch, documents=["a", "b", "c", "d"], model="x",
                              **fields).status_code == 200
                parts = [*a.bodies[before[0]:], *b.bodies[before[1]:]]
                assert len(parts) == 2 and [p["priority"] for p in parts] == [expected, expected], parts
                assert all("model" not in p for p in parts)
        finally:
            proc.stop()
    finally:
        a.server.stop()
        b.server.stop()


# ------------------------------------------------------------------------------- a real replica behind an alias


def test_a_real_replica_serves_a_vendor_name_through_an_alias_and_the_default_route(
        tiny_model_dir: Path, tmp_path: Path) -> None:
    """A strict ``rerankd serve`` answers 404 for a model it does not serve; through the model table it never
    sees one (the gateway rewrites ``model``)."""
    replica = spawn_replica(tiny_model_dir, tmp_path, "--compile", "off", "--strict-model-names").wait_ready(200)
    try:
        proc = gateway_proc(tmp_path, "--pool", f"tiny-reranker={replica.url}",
                            "--model-alias", "rerank-v3.5=tiny-reranker")
        try:
            key = make_key(proc.url, "real")
            body: dict[str, Any] = {"query": "capital of France", "documents": ["Paris", "Berlin"]}
            direct = httpx.post(f"{replica.url}/v1/rerank", json={**body, "model": "rerank-v3.5"}, timeout=60)
            assert direct.status_code == 404  # what a Cohere client gets from a strict replica
            reference = httpx.post(f"{replica.url}/v1/rerank", json=body, timeout=60).json()["results"]
            for asked in ("rerank-v3.5", "default/not-specified", "tiny-reranker"):
                answer = rerank(proc.url, key, model=asked, **body)
                assert answer.status_code == 200, answer.text
                assert answer.json()["results"] == reference
        finally:
            proc.stop()
    finally:
        replica.stop()


def _ledger_models(database_url: str) -> list[str]:
    async def read() -> list[str]:
        engine = create_engine_for(database_url)
        try:
            async with engine.connect() as conn:
                return [m for (m,) in await conn.execute(select(UsageRecord.model).order_by(UsageRecord.id))]
        finally:
            await engine.dispose()
    return asyncio.run(read())
