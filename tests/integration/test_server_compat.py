"""What client libraries need unchanged from a bare ``rerankd serve``: any model name, errors they can read
(Jina's ``detail``, TEI's ``{"error", "error_type"}``), structured documents, ``priority``, the OpenAI model
routes and TEI's ``/info`` — each against a real server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from huggingface_hub import InferenceClient

from rerankd.engine.engine import load_engine
from rerankd.server.app import create_server_app
from rerankd.server.settings import ServerSettings
from support import free_port, serving_in_thread

QUERY = "what is the capital of France?"


def scores_by_index(answer: httpx.Response) -> dict[int, float]:
    assert answer.status_code == 200, answer.text
    return {r["index"]: r["relevance_score"] for r in answer.json()["results"]}


# ---------------------------------------------------------------- model names (the default: any name)


@pytest.mark.parametrize("name", ["rerank-v3.5", "jina-reranker-v2-base-multilingual", "default/not-specified"])
def test_any_model_name_is_served_and_the_answer_names_the_real_model(server_url: str, name: str) -> None:
    for path in ("/v1/rerank", "/v2/rerank"):
        answer = httpx.post(f"{server_url}{path}", json={"model": name, "query": QUERY, "documents": ["Paris"]})
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == "tiny-reranker"
    score = httpx.post(f"{server_url}/v1/score", json={"model": name, "text_1": QUERY, "text_2": ["Paris"]})
    assert score.status_code == 200 and score.json()["model"] == "tiny-reranker"


def test_models_list_and_one_model_object(server_url: str) -> None:
    listed = httpx.get(f"{server_url}/v1/models").json()
    assert [m["id"] for m in listed["data"]] == ["tiny-reranker"]
    card = httpx.get(f"{server_url}/v1/models/tiny-reranker")
    assert card.status_code == 200
    assert {"id": "tiny-reranker", "object": "model", "owned_by": "rerankd"}.items() <= card.json().items()
    assert isinstance(card.json()["created"], int)
    missing = httpx.get(f"{server_url}/v1/models/rerank-v3.5")
    assert missing.status_code == 404
    error = missing.json()["error"]
    assert error["type"] == "model_not_found" and "'tiny-reranker'" in error["message"]
    assert missing.json()["detail"] == error["message"]


# ---------------------------------------------------------------- errors every client can read


def test_jina_style_clients_read_detail(server_url: str) -> None:
    answer = httpx.post(f"{server_url}/v1/rerank", json={"query": QUERY, "documents": ["a"], "top_n": 0})
    assert answer.status_code == 422
    assert "top_n" in answer.json()["detail"] and answer.json()["detail"] == answer.json()["error"]["message"]


@pytest.mark.parametrize(("body", "status", "error_type", "needle"), [
    ({"query": QUERY, "texts": []}, 400, "Empty", "`texts`"),
    ({"query": QUERY, "texts": [1]}, 422, "Validation", "`texts.0`"),
    ({"texts": ["a"]}, 422, "Validation", "`query`"),
    ({"query": QUERY, "texts": ["a"], "raw_scores": "maybe"}, 422, "Validation", "`raw_scores`"),
    ({"query": QUERY, "texts": ["a"] * 51}, 422, "Validation", "--max-documents"),
    ({"query": "long query " * 400, "texts": ["a"]}, 422, "Validation", "query"),
])
def test_tei_requests_get_tei_errors_naming_tei_fields(server_url: str, body: dict[str, Any], status: int,
                                                       error_type: str, needle: str) -> None:
    answer = httpx.post(f"{server_url}/rerank", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json().keys() == {"error", "error_type"}
    assert answer.json()["error_type"] == error_type
    assert needle in answer.json()["error"] and "`documents`" not in answer.json()["error"]


def test_a_rerank_body_on_slash_rerank_keeps_rerankd_errors(server_url: str) -> None:
    answer = httpx.post(f"{server_url}/rerank", json={"query": QUERY, "documents": []})
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "documents"
    assert "texts" not in answer.json()["detail"]


# ---------------------------------------------------------------- structured documents


def test_rank_fields_score_the_named_fields_as_cohere_yaml_lines(server_url: str) -> None:
    doc = {"title": "Paris", "body": "The capital of France.", "id": 7, "tags": None}
    # Identical texts are scored once per request, so equal ranked texts get exactly equal scores.
    documents = [doc, "title: Paris\nbody: The capital of France.", "body: The capital of France.\ntitle: Paris"]
    answer = httpx.post(f"{server_url}/v1/rerank", json={"query": QUERY, "documents": documents,
                                                         "rank_fields": ["title", "body"]})
    scores = scores_by_index(answer)
    assert scores[0] == scores[1] != scores[2]
    returned = {r["index"]: r["document"] for r in answer.json()["results"]}
    assert returned[0] == doc  # the object whole, its null metadata too
    assert returned[1] == {"text": documents[1]}
    one = httpx.post(f"{server_url}/v1/rerank", json={"query": QUERY, "documents": [doc, doc["body"]],
                                                      "rank_fields": ["body"]})
    one_scores = scores_by_index(one)
    assert one_scores[0] == one_scores[1]  # a single field is scored as its value alone


def test_text_objects_score_as_their_text_as_before(server_url: str) -> None:
    answer = httpx.post(f"{server_url}/v1/rerank", json={"query": QUERY, "documents": [{"text": "Paris"}, "Paris"]})
    scores = scores_by_index(answer)
    assert scores[0] == scores[1]
    assert {r["index"]: r["document"] for r in answer.json()["results"]} == {0: {"text": "Paris"},
                                                                            1: {"text": "Paris"}}


@pytest.mark.parametrize(("body", "field", "needle"), [
    ({"documents": [{"text": "a"}, {"title": "b"}], "rank_fields": ["title"]}, "documents.0.title", "no field"),
    ({"documents": [{"title": "a", "year": 1999}], "rank_fields": ["title", "year"]}, "documents.0.year",
     "must be a string"),
    ({"documents": ["a", {"body": "b"}]}, "documents.1.text", "rank_fields"),
    ({"documents": ["a"], "rank_fields": []}, "rank_fields", "rank_fields"),
])
def test_a_missing_or_non_string_rank_field_is_a_422_naming_document_and_field(
        server_url: str, body: dict[str, Any], field: str, needle: str) -> None:
    answer = httpx.post(f"{server_url}/v1/rerank", json={"query": QUERY, **body})
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["field"] == field and needle in error["message"]


# ---------------------------------------------------------------- priority


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/rerank", {"query": QUERY, "documents": ["a"]}),
    ("/v2/rerank", {"query": QUERY, "documents": ["a"]}),
    ("/rerank", {"query": QUERY, "documents": ["a"]}),
    ("/rerank", {"query": QUERY, "texts": ["a"]}),
    ("/v1/score", {"text_1": QUERY, "text_2": ["a"]}),
])
def test_priority_is_an_int32_on_every_scoring_route(server_url: str, path: str, body: dict[str, Any]) -> None:
    for good in (0, -5, 10, 2**31 - 1):
        assert httpx.post(f"{server_url}{path}", json={**body, "priority": good}).status_code == 200
    for bad in ("high", 1.5, True, 2**31):
        answer = httpx.post(f"{server_url}{path}", json={**body, "priority": bad})
        assert answer.status_code == 422, (bad, answer.text)
        message = answer.json()["error"] if "texts" in body else answer.json()["error"]["message"]
        assert "`priority`" in message


# ---------------------------------------------------------------- /info (TEI's fields and ours)


def test_info_has_tei_fields_and_rerankd_fields(server_url: str) -> None:
    info = InferenceClient(model=server_url, provider="hf-inference").get_endpoint_info()
    assert info["model_type"] == {"reranker": {"id2label": {"0": "yes"}, "label2id": {"yes": 0}}}
    assert (info["served_model_name"], info["model_dtype"], info["max_input_length"]) == ("tiny-reranker", "float32",
                                                                                        256)
    assert info["max_client_batch_size"] == 50 and info["max_batch_tokens"] > 0 and info["auto_truncate"] is True
    for field in ("model_id", "model_sha", "max_concurrent_requests", "max_batch_requests", "tokenization_workers",
                  "version", "sha", "docker_label"):
        assert field in info, field
    # rerankd's own fields stay.
    assert (info["model"], info["backend"], info["dtype"], info["max_model_len"]) == ("tiny-reranker", "torch",
                                                                                     "float32", 256)
    assert info["served_model_names"] == ["tiny-reranker"] and info["strict_model_names"] is False


# ---------------------------------------------------------------- a strict server with several names


class _Recorded:
    """The priorities the real batcher was handed (a spy around the loaded engine's batcher)."""

    def __init__(self) -> None:
        self.priorities: list[int] = []

    def loader(self, config: Any, metrics: Any) -> Any:
        engine = load_engine(config, metrics)
        submit = engine.batcher.submit

        async def recording_submit(*args: Any, **kwargs: Any) -> list[float]:
            self.priorities.append(kwargs.get("priority", 0))
            return await submit(*args, **kwargs)

        engine.batcher.submit = recording_submit  # type: ignore[method-assign]
        return engine


@pytest.fixture(scope="module")
def strict_server(tiny_model_dir: Path) -> Iterator[tuple[str, _Recorded]]:
    settings = ServerSettings(model=str(tiny_model_dir), served_model_name=("rerank-v3.5", "tiny-alias"),
                              strict_model_names=True, device="cpu", dtype="float32", max_model_len=256,
                              compile="off")
    port = free_port()
    recorded = _Recorded()

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    app = create_server_app(settings.model_copy(update={"port": port}), engine_loader=recorded.loader)
    with serving_in_thread(app, port, ready, 300, "strict server") as url:
        yield url, recorded


def test_strict_names_answer_404_listing_every_served_name(strict_server: tuple[str, _Recorded]) -> None:
    url, _ = strict_server
    body = {"query": QUERY, "documents": ["a"]}
    for name in ("rerank-v3.5", "tiny-alias", None):
        answer = httpx.post(f"{url}/v1/rerank", json={**body, "model": name})
        assert answer.status_code == 200 and answer.json()["model"] == "rerank-v3.5"  # the first name is reported
    answer = httpx.post(f"{url}/v1/rerank", json={**body, "model": "jina-reranker-v2-base-multilingual"})
    assert answer.status_code == 404
    assert "'rerank-v3.5', 'tiny-alias'" in answer.json()["detail"] and answer.json()["error"]["field"] == "model"
    score = httpx.post(f"{url}/v1/score", json={"model": "other", "text_1": "q", "text_2": ["a"]})
    assert score.status_code == 404
    assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == ["rerank-v3.5", "tiny-alias"]
    assert httpx.get(f"{url}/v1/models/tiny-alias").json()["id"] == "tiny-alias"
    info = httpx.get(f"{url}/info").json()
    assert info["served_model_names"] == ["rerank-v3.5", "tiny-alias"] and info["strict_model_names"] is True


def test_priority_reaches_the_batcher(strict_server: tuple[str, _Recorded]) -> None:
    url, recorded = strict_server
    recorded.priorities.clear()
    assert httpx.post(f"{url}/v1/rerank", json={"query": QUERY, "documents": ["a"], "priority": -7}).status_code == 200
    assert httpx.post(f"{url}/rerank", json={"query": QUERY, "texts": ["b"], "priority": 3}).status_code == 200
    assert httpx.post(f"{url}/v1/score", json={"text_1": ["q1", "q2"], "text_2": ["c", "d"],
                                               "priority": 9}).status_code == 200
    assert httpx.post(f"{url}/v2/rerank", json={"query": QUERY, "documents": ["e"]}).status_code == 200
    assert recorded.priorities == [-7, 3, 9, 9, 0]  # /v1/score: one batcher request per distinct query
