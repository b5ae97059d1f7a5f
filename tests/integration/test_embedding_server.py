"""The embedding routes of a real server: the OpenAI SDK, every dialect's shape, limits, errors and metrics."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer

from rerankd.engine.embedding import format_query, quantize
from rerankd.server.settings import ServerSettings
from support import metric_value, running_server

TEXTS = ["The capital of China is Beijing.", "如何实现Python中的异步爬虫", "def f(x):\n    return 2 * x"]
LONG = "Gravity is a force that attracts two bodies towards each other. " * 30  # > 128 tokens


@pytest.fixture(scope="module")
def reranker_url(tiny_model_dir: Path) -> Iterator[str]:
    """A reranker's server (transformers' forward: no kernels to compile)."""
    settings = ServerSettings(model=str(tiny_model_dir), device="cpu", dtype="float32", compile="off")
    with running_server(settings) as url:
        yield url


def post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=60)


def card(model_dir: Path, texts: list[str]) -> np.ndarray:
    """The model card's recipe (left padding, last token, normalise) at the server's 128-token length."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state[:, -1]
    return F.normalize(hidden, p=2, dim=1).numpy()


def test_the_openai_sdk_gets_the_vectors_unchanged(embed_server_url: str, embed_model_dir: Path) -> None:
    client = openai.OpenAI(base_url=f"{embed_server_url}/v1", api_key="unused")
    answer = client.embeddings.create(model="tiny-embedder", input=TEXTS)  # the SDK asks for base64 by default
    sdk = np.array([d.embedding for d in answer.data], dtype=np.float32)
    assert np.abs(sdk - card(embed_model_dir, TEXTS)).max() <= 1e-4
    floats = post(embed_server_url, "/v1/embeddings", {"input": TEXTS, "encoding_format": "float"}).json()
    assert np.array_equal(sdk, np.array([d["embedding"] for d in floats["data"]], dtype=np.float32))
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == floats["usage"]["prompt_tokens"] > 3
    assert answer.model == "tiny-embedder" and [d.index for d in answer.data] == [0, 1, 2]
    small = client.embeddings.create(model="tiny-embedder", input="hello", dimensions=32, user="someone")
    assert len(small.data[0].embedding) == 32
    assert abs(np.linalg.norm(small.data[0].embedding) - 1) < 1e-5


def test_dimensions_outside_the_range_are_a_422_naming_it(embed_server_url: str) -> None:
    for body, path in (({"input": "x", "dimensions": 65}, "/v1/embeddings"), ({"inputs": "x", "dimensions": 31},
                       "/embed"), ({"texts": ["x"], "output_dimension": 8}, "/v2/embed")):
        answer = post(embed_server_url, path, body)
        assert answer.status_code == 422, answer.text
        assert "32 to 64" in answer.json()["error"]["message"]


def test_cohere_embedding_types_are_the_float_vectors_quantised(embed_server_url: str) -> None:
    body = {"texts": TEXTS, "input_type": "search_query",
            "embedding_types": ["float", "int8", "uint8", "binary", "ubinary", "base64"]}
    answer = post(embed_server_url, "/v2/embed", body)
    assert answer.status_code == 200, answer.text
    got = answer.json()
    vectors = np.array(got["embeddings"]["float"], dtype=np.float32)
    for kind in ("int8", "uint8", "binary", "ubinary", "base64"):
        assert got["embeddings"][kind] == quantize(vectors, kind)
    assert len(got["embeddings"]["ubinary"][0]) == 64 // 8
    assert got["texts"] == TEXTS and got["response_type"] == "embeddings_by_type"
    assert got["meta"]["billed_units"]["input_tokens"] > 3 * 20  # queries carry the instruction
    documents = post(embed_server_url, "/v2/embed", {"texts": TEXTS, "input_type": "search_document"}).json()
    assert not np.allclose(documents["embeddings"]["float"], vectors, atol=1e-3)
    assert list(documents["embeddings"]) == ["float"]


def test_cohere_v1_embed_is_v2s_vectors_in_v1s_shapes(embed_server_url: str) -> None:
    """POST /v1/embed (LangChain's CohereEmbeddings, the SDK's v1 Client.embed): embeddings_floats without
    embedding_types, embeddings_by_type with them; the vectors are /v2/embed's and /v1/embeddings'."""
    for input_type, openai_type in (("search_query", "query"), ("search_document", "document"),
                                    ("classification", "classification")):
        v1 = post(embed_server_url, "/v1/embed", {"texts": TEXTS, "model": "embed-english-v3.0",
                                                  "input_type": input_type, "truncate": "END"})
        assert v1.status_code == 200, v1.text
        floats = v1.json()
        assert floats["response_type"] == "embeddings_floats" and floats["texts"] == TEXTS and floats["id"]
        assert floats["meta"]["api_version"] == {"version": "1"}
        assert isinstance(floats["embeddings"], list) and len(floats["embeddings"]) == len(TEXTS)
        v2 = post(embed_server_url, "/v2/embed", {"texts": TEXTS, "input_type": input_type}).json()
        openai_vectors = [d["embedding"] for d in post(embed_server_url, "/v1/embeddings", {
            "input": TEXTS, "input_type": openai_type}).json()["data"]]
        assert np.abs(np.array(floats["embeddings"]) - np.array(v2["embeddings"]["float"])).max() < 1e-6
        assert np.abs(np.array(floats["embeddings"]) - np.array(openai_vectors)).max() < 1e-6
        assert floats["meta"]["billed_units"] == v2["meta"]["billed_units"]
        assert floats["meta"]["billed_units"]["input_tokens"] > 3
    kinds = ["float", "int8", "uint8", "binary", "ubinary"]
    by_type = post(embed_server_url, "/v1/embed", {"texts": TEXTS, "input_type": "search_query",
                                                   "embedding_types": kinds}).json()
    v2 = post(embed_server_url, "/v2/embed", {"texts": TEXTS, "input_type": "search_query",
                                              "embedding_types": kinds}).json()
    assert by_type["response_type"] == "embeddings_by_type" and list(by_type["embeddings"]) == kinds
    for kind in ("int8", "uint8", "binary", "ubinary"):
        assert by_type["embeddings"][kind] == v2["embeddings"][kind]
    assert np.abs(np.array(by_type["embeddings"]["float"]) - np.array(v2["embeddings"]["float"])).max() < 1e-6
    # a document, as v2's default; nulls are what the SDK sends for LangChain's unset options
    no_input_type = post(embed_server_url, "/v1/embed", {"texts": TEXTS, "truncate": None, "input_type": None,
                                                         "embedding_types": None}).json()
    assert no_input_type["response_type"] == "embeddings_floats"
    documents = post(embed_server_url, "/v2/embed", {"texts": TEXTS}).json()["embeddings"]["float"]
    assert np.abs(np.array(no_input_type["embeddings"]) - np.array(documents)).max() < 1e-6
    cut = post(embed_server_url, "/v1/embed", {"texts": [LONG], "truncate": "NONE"})
    assert cut.status_code == 413 and cut.json()["error"]["field"] == "texts[0]"


@pytest.mark.parametrize(("body", "words"), [
    ({"texts": ["x"], "embedding_types": ["int4"]}, ("embedding_types", "ubinary")),
    ({"texts": ["x"], "embedding_types": ["base64"]}, ("embedding_types", "ubinary")),
    ({"texts": ["x"], "input_type": "image"}, ("input_type", "search_query")),
    ({"texts": ["x"], "images": ["data:image/png;base64,AAAA"]}, ("images", "texts")),
    ({"texts": ["x"], "truncate": "MIDDLE"}, ("truncate", "START")),
    ({"texts": []}, ("texts",)),
])
def test_cohere_v1_bad_bodies_are_422s_that_say_what_to_fix(embed_server_url: str, body: dict,
                                                               words: tuple[str, ...]) -> None:
    answer = post(embed_server_url, "/v1/embed", body)
    assert answer.status_code == 422, answer.text
    for word in words:
        assert word in answer.text


def test_queries_are_instructed_documents_are_not(embed_server_url: str) -> None:
    def vectors(path: str, body: dict) -> np.ndarray:
        answer = post(embed_server_url, path, body)
        assert answer.status_code == 200, answer.text
        data = answer.json()
        return np.array(data if path == "/embed" else [d["embedding"] for d in data["data"]])

    as_query = vectors("/v1/embeddings", {"input": TEXTS, "input_type": "query"})
    formatted = vectors("/v1/embeddings", {"input": [format_query(t) for t in TEXTS]})
    assert np.abs(as_query - formatted).max() < 1e-6
    assert np.abs(vectors("/embed", {"inputs": TEXTS, "prompt_name": "query"}) - as_query).max() < 1e-6
    assert np.abs(vectors("/v1/embeddings", {"input": TEXTS, "task": "retrieval.query"}) - as_query).max() < 1e-6
    plain = vectors("/v1/embeddings", {"input": TEXTS})
    assert np.abs(vectors("/v1/embeddings", {"input": TEXTS, "input_type": "search_document"}) - plain).max() < 1e-6
    assert np.abs(plain - as_query).max() > 1e-3


def test_tei_normalize_truncate_and_direction(embed_server_url: str) -> None:
    raw = post(embed_server_url, "/embed", {"inputs": TEXTS[0], "normalize": False})
    assert raw.status_code == 200 and int(raw.headers["x-prompt-tokens"]) > 3
    assert abs(np.linalg.norm(raw.json()[0]) - 1) > 1e-3
    unit = post(embed_server_url, "/embed", {"inputs": TEXTS[0]}).json()[0]
    assert np.abs(np.array(raw.json()[0]) / np.linalg.norm(raw.json()[0]) - unit).max() < 1e-5
    refused = post(embed_server_url, "/embed", {"inputs": [TEXTS[0], LONG], "truncate": False})
    assert refused.status_code == 413
    assert refused.json()["error"]["field"] == "inputs[1]" and "128" in refused.json()["error"]["message"]
    right = post(embed_server_url, "/embed", {"inputs": LONG, "truncate": True}).json()[0]
    left = post(embed_server_url, "/embed", {"inputs": LONG + " The end.", "truncation_direction": "Left"}).json()[0]
    right_too = post(embed_server_url, "/embed", {"inputs": LONG + " The end."}).json()[0]
    assert np.abs(np.array(right) - np.array(right_too)).max() < 1e-6  # the cut tail does not matter...
    assert np.abs(np.array(left) - np.array(right_too)).max() > 1e-3  # ...unless the head is cut instead
    cohere_none = post(embed_server_url, "/v2/embed", {"texts": [LONG], "truncate": "NONE"})
    assert cohere_none.status_code == 413 and cohere_none.json()["error"]["field"] == "texts[0]"


def test_token_id_inputs_and_their_limits(embed_server_url: str, embed_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(embed_model_dir)
    ids = tokenizer.encode(TEXTS[0], add_special_tokens=False)
    by_ids = post(embed_server_url, "/v1/embeddings", {"input": ids}).json()["data"][0]["embedding"]
    by_text = post(embed_server_url, "/v1/embeddings", {"input": TEXTS[0]}).json()["data"][0]["embedding"]
    assert np.abs(np.array(by_ids) - np.array(by_text)).max() < 1e-6
    # One input's token ids are not a list of inputs: more ids than --max-documents (50) is one input.
    many = post(embed_server_url, "/v1/embeddings", {"input": list(range(1000, 1100))})
    assert many.status_code == 200, many.text
    assert many.json()["usage"]["prompt_tokens"] == 101  # the ids and <|endoftext|>
    bad = post(embed_server_url, "/v1/embeddings", {"input": [[1, 2], [3, 10**7]]})
    assert bad.status_code == 422 and "vocabulary" in bad.json()["error"]["message"]
    too_many = post(embed_server_url, "/v1/embeddings", {"input": ["x"] * 51})
    assert too_many.status_code == 413 and too_many.json()["error"]["field"] == "input"


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/embeddings", {"input": []}, "input"),
    ("/v1/embeddings", {"input": [[]]}, "input"),
    ("/v1/embeddings", {"input": "x", "input_type": "image"}, "input_type"),
    ("/v1/embeddings", {"input": "x", "task": "nope"}, "task"),
    ("/v1/embeddings", {"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ("/embed", {"inputs": "x", "prompt_name": "nope"}, "prompt_name"),
    ("/v2/embed", {"texts": ["x"], "embedding_types": ["int4"]}, "embedding_types"),
    ("/v2/embed", {"texts": []}, "texts"),
])
def test_bad_bodies_are_422s_that_say_what_to_fix(embed_server_url: str, path: str, body: dict, field: str) -> None:
    answer = post(embed_server_url, path, body)
    assert answer.status_code == 422, answer.text
    assert field in answer.text


def test_any_model_name_is_served_by_the_one_model(embed_server_url: str) -> None:
    """A vendor name (the OpenAI SDK's default) is answered by the served model, which the answer names; a
    server started with --strict-model-names keeps the 404 (tests/integration/test_server_compat.py)."""
    answer = post(embed_server_url, "/v1/embeddings", {"input": "x", "model": "text-embedding-3-small"})
    assert answer.status_code == 200 and answer.json()["model"] == "tiny-embedder", answer.text


def test_each_server_refuses_the_other_tasks_routes(embed_server_url: str, reranker_url: str) -> None:
    on_reranker = post(reranker_url, "/v1/embeddings", {"input": "x"})
    assert on_reranker.status_code == 400 and on_reranker.json()["error"]["type"] == "wrong_task"
    assert "serves a reranker" in on_reranker.json()["error"]["message"]
    assert post(reranker_url, "/v1/rerank", {"query": "q", "documents": ["d"]}).status_code == 200
    for path, body in (("/v1/rerank", {"query": "q", "documents": ["d"]}), ("/rerank", {"query": "q", "texts": ["d"]}),
                       ("/v1/score", {"text_1": "q", "text_2": ["d"]})):
        on_embedder = post(embed_server_url, path, body)
        assert on_embedder.status_code == 400, (path, on_embedder.text)
        error = on_embedder.json()["error"]  # TEI's shape (a TEI body) has the message itself there
        assert "serves an embedding model" in (error if isinstance(error, str) else error["message"])


def test_metrics_and_info_say_the_task(embed_server_url: str) -> None:
    before = metric_value(embed_server_url, "rerankd_embeddings_total")
    tokens_before = metric_value(embed_server_url, "rerankd_embedding_tokens_total")
    billed = post(embed_server_url, "/v1/embeddings", {"input": TEXTS}).json()["usage"]["prompt_tokens"]
    assert metric_value(embed_server_url, "rerankd_embeddings_total") == before + 3
    assert metric_value(embed_server_url, "rerankd_embedding_tokens_total") == tokens_before + billed
    metrics = httpx.get(f"{embed_server_url}/metrics").text
    assert 'task="embed"' in metrics and 'route="/v1/embeddings"' in metrics
    info = httpx.get(f"{embed_server_url}/info").json()
    assert info["task"] == "embed" and info["dimensions"] == 64


def test_base64_is_little_endian_float32(embed_server_url: str) -> None:
    answer = post(embed_server_url, "/v1/embeddings", {"input": TEXTS[:1], "encoding_format": "base64"}).json()
    floats = post(embed_server_url, "/v1/embeddings", {"input": TEXTS[:1]}).json()["data"][0]["embedding"]
    raw = base64.b64decode(answer["data"][0]["embedding"])
    assert len(raw) == 4 * 64
    assert np.frombuffer(raw, dtype="<f4").tolist() == np.array(floats, dtype=np.float32).tolist()


async def test_task_override_and_detection_on_real_layouts(tiny_model_dir: Path, embed_model_dir: Path) -> None:
    """``--task auto`` reads each layout; ``--task embed`` serves a reranker's checkpoint as an embedder."""
    from rerankd.engine.embedding import detect_task
    from rerankd.engine.engine import EngineConfig, load_engine

    assert detect_task(tiny_model_dir) == "rerank" and detect_task(embed_model_dir) == "embed"
    engine = load_engine(EngineConfig(model=str(tiny_model_dir), task="embed", device="cpu", dtype="float32",
                                      compile="off", max_model_len=128))
    engine.batcher.start()
    try:
        assert engine.task == "embed" and engine.dimensions == 64
        outcome = await engine.embed_all(["a", "b", "a"], is_query=True)
        assert outcome.vectors.shape == (3, 64) and np.array_equal(outcome.vectors[0], outcome.vectors[2])
        assert np.allclose(np.linalg.norm(outcome.vectors, axis=1), 1, atol=1e-5)
    finally:
        await engine.close()
