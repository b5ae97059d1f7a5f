"""``rerankd eval`` with the dense and hybrid first stages, against a real embedding server (the tiny random
Qwen3-Embedding) and a real reranker server, both session fixtures.

The expected numbers are computed here without rerankd.evaluation: vectors fetched from the server as JSON
floats (the eval sends base64), cosine top-k in plain Python, RRF by its formula, BM25 by ``eval_reference``,
the reranked order from the rerank server's own sorted answer, metrics by hand-written formulas.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from click.testing import CliRunner, Result

from eval_reference import bm25_top_k, mean_metrics
from rerankd.cli import cli
from rerankd.embedding_client import EmbeddingClient
from rerankd.evaluation.beir import load_beir
from rerankd.evaluation.bm25 import Tokenizer

pytestmark = pytest.mark.timeout(180)

DATA = Path(__file__).resolve().parents[1] / "data"
STAGE_ROWS = ("BM25", "dense", "hybrid")


def run_eval(*args: str) -> Result:
    return CliRunner().invoke(cli, ["eval", *args], catch_exceptions=False)


def embed(url: str, texts: list[str], **fields: Any) -> list[list[float]]:
    body = {"input": texts, "encoding_format": "float", **fields}
    data = httpx.post(f"{url}/v1/embeddings", json=body, timeout=60).raise_for_status().json()["data"]
    return [item["embedding"] for item in sorted(data, key=lambda item: item["index"])]


def cosine_top_k(query: list[float], documents: list[list[float]], k: int) -> list[int]:
    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    sims = [cos(query, d) for d in documents]
    return sorted(range(len(documents)), key=lambda i: (-sims[i], i))[:k]


def rrf(lists: list[list[str]], k: float, top: int) -> list[str]:
    scores = {d: sum(1 / (k + r.index(d) + 1) for r in lists if d in r) for r in lists for d in r}
    order = [r[i] for i in range(max(map(len, lists))) for r in lists if i < len(r)]  # first appearance
    first = {d: order.index(d) for d in scores}
    return sorted(scores, key=lambda d: (-scores[d], first[d]))[:top]


def expected_stages(dataset: str, language: str, top_k: int, embed_url: str, rerank_url: str, fed: str,
                    instruction: str | None = None, rrf_k: float = 60) -> dict[str, dict[str, list[str]]]:
    """Each stage's lists: bm25, dense, hybrid, and the reranked lists of the ``fed`` stage."""
    ds = load_beir(DATA / dataset)
    tokenizer = Tokenizer(language)
    corpus_tokens = tokenizer.tokenize(ds.corpus_texts)
    bm25 = {q: [ds.corpus_ids[i] for i, _ in bm25_top_k(corpus_tokens, tokenizer(text), top_k)]
            for q, text in ds.queries.items()}
    doc_vectors = embed(embed_url, ds.corpus_texts)  # no input_type: documents, as the card embeds them
    fields = {"input_type": "query"} | ({"instruction": instruction} if instruction else {})
    query_vectors = embed(embed_url, list(ds.queries.values()), **fields)
    dense = {q: [ds.corpus_ids[i] for i in cosine_top_k(v, doc_vectors, top_k)]
             for q, v in zip(ds.queries, query_vectors, strict=True)}
    hybrid = {q: rrf([bm25[q], dense[q]], rrf_k, top_k) for q in ds.queries}
    stages = {"bm25": bm25, "dense": dense, "hybrid": hybrid}
    text_of = dict(zip(ds.corpus_ids, ds.corpus_texts, strict=True))
    reranked = {}
    for q, candidates in stages[fed].items():
        body = {"query": ds.queries[q], "documents": [text_of[d] for d in candidates]}
        results = httpx.post(f"{rerank_url}/v1/rerank", json=body, timeout=60).raise_for_status().json()["results"]
        reranked[q] = [candidates[r["index"]] for r in results]
    return {**stages, "reranked": reranked}


def assert_metrics_equal(got: dict[str, float], expected: dict[str, float]) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name


def stage_table(output: str) -> dict[str, list[str]]:
    """The rows of the printed stage table: label → its numbers."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("stage "))
    rows = {}
    for line in lines[start + 2:]:
        if not line.strip():
            break
        label, *numbers = line.split()
        rows[label] = numbers
    return rows


def test_every_stage_is_reported_and_the_hybrid_is_reranked(server_url: str, embed_server_url: str,
                                                            tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    ks = [1, 3, 5, 10]
    result = run_eval("--dataset", str(DATA / "beir-mini"), "--reranker", server_url, "--embedding-url",
                      embed_server_url, "--first-stage", "hybrid", "--top-k", "5", "--embedding-batch-size", "16",
                      "--output", str(out), "--per-query")
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    ds = load_beir(DATA / "beir-mini")
    lists = expected_stages("beir-mini", "en", 5, embed_server_url, server_url, "hybrid")

    assert report["first_stage"] == "hybrid" and report["embedding_model"] == "tiny-embedder"
    assert report["dense_index"] == "exact" and report["rrf_k"] == 60 and report["embedding_dimensions"] == 64
    # ceil(40 documents / 16) + one batch of 10 queries (the preflight is not the run's)
    assert report["embedding_requests"] == 3 + 1
    for stage in ("bm25", "dense", "hybrid"):
        assert_metrics_equal(report[stage], mean_metrics(ds.qrels, lists[stage], ks))
        assert {row["query_id"]: row[f"{stage}_top"] for row in report["per_query"]} == lists[stage]
    assert_metrics_equal(report["runs"][0]["reranked"], mean_metrics(ds.qrels, lists["reranked"], ks))
    hybrid = report["hybrid"]
    assert report["runs"][0]["lift"]["ndcg@10"] == pytest.approx(
        (report["runs"][0]["reranked"]["ndcg@10"] - hybrid["ndcg@10"]) / hybrid["ndcg@10"])
    # The stages really differ, so each check above checks something of its own.
    assert lists["dense"] != lists["bm25"] and lists["hybrid"] not in (lists["dense"], lists["bm25"])
    assert lists["reranked"] != lists["hybrid"]

    rows = stage_table(result.output)
    assert list(rows) == [*STAGE_ROWS, "hybrid+rerank"]
    for label, key in zip(STAGE_ROWS, ("bm25", "dense", "hybrid"), strict=True):
        assert rows[label] == [f"{report[key][n]:.4f}" for n in ("ndcg@10", "mrr@10", "recall@10")]
    assert rows["hybrid+rerank"][0] == f"{report['runs'][0]['reranked']['ndcg@10']:.4f}"
    assert "first stage hybrid (BM25 + dense by tiny-embedder, RRF k=60)" in result.output


def test_dense_first_stage_with_an_instruction_on_chinese(server_url: str, embed_server_url: str,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "zh.json"
    instruction = "Given a Chinese question, retrieve passages that answer it"
    result = run_eval("--dataset", str(DATA / "beir-mini-zh"), "--reranker", server_url, "--embedding-url",
                      embed_server_url, "--first-stage", "dense", "--top-k", "4", "--rrf-k", "1",
                      "--embedding-instruction", instruction, "--k", "1,3", "--output", str(out))
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    ds = load_beir(DATA / "beir-mini-zh")
    lists = expected_stages("beir-mini-zh", "zh", 4, embed_server_url, server_url, "dense", instruction, rrf_k=1)
    for stage in ("bm25", "dense", "hybrid"):
        assert_metrics_equal(report[stage], mean_metrics(ds.qrels, lists[stage], [1, 3]))
    assert_metrics_equal(report["runs"][0]["reranked"], mean_metrics(ds.qrels, lists["reranked"], [1, 3]))
    # The instruction reached the server: without it the query vectors, and so the dense lists, differ.
    plain = expected_stages("beir-mini-zh", "zh", 4, embed_server_url, server_url, "dense")
    assert plain["dense"] != lists["dense"]
    assert list(stage_table(result.output)) == [*STAGE_ROWS, "dense+rerank"]
    assert "lift over dense" in result.output


def test_a_batch_refused_as_too_large_is_halved(embed_server_url: str) -> None:
    texts = [f"passage number {i} about topic {i % 7}" for i in range(60)]  # the server takes 50 inputs at most

    async def both() -> tuple[np.ndarray, np.ndarray, EmbeddingClient]:
        async with EmbeddingClient(embed_server_url, batch_size=64) as big, \
                EmbeddingClient(embed_server_url, batch_size=7) as small:
            return await big.embed_all(texts, query=False), await small.embed_all(texts, query=False), big

    halved, reference, client = asyncio.run(both())
    assert client.batch_size == 32 and client.requests_sent == 1 + 2  # the 413, then 32 + 28
    # Batching changes a vector by float32 rounding only (batch invariance is the server's opt-in).
    np.testing.assert_allclose(halved, reference, atol=1e-6)
    np.testing.assert_allclose(halved[:3], np.array(embed(embed_server_url, texts[:3])), atol=1e-6)


def test_wrong_embedding_server_fails_fast_naming_the_flag(server_url: str) -> None:
    result = CliRunner().invoke(cli, ["eval", "--dataset", str(DATA / "beir-mini"), "--reranker", server_url,
                                      "--embedding-url", server_url])  # a reranker, not an embedder
    assert result.exit_code == 1
    assert "the embedding server at" in result.output and "400" in result.output
    assert "embedding model" in result.output  # the server's own words: it serves a reranker
