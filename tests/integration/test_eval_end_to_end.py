"""``rerankd eval`` end to end against a real server with the tiny random model.

The expected numbers are computed independently in the test: BM25 by the reference implementation in
``eval_reference`` (same tokenizer, textbook formula), the reranked order straight from the server's own
sorted answer, and every metric by hand-written formulas, not by ranx.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from eval_reference import bm25_top_k, mean_metrics
from rerankd.cli import cli
from rerankd.evaluation.beir import load_beir
from rerankd.evaluation.bm25 import Tokenizer

pytestmark = pytest.mark.timeout(120)

DATA = Path(__file__).resolve().parents[1] / "data"


def run_eval(*args: str, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(cli, ["eval", *args], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def expected_numbers(dataset: str, language: str, top_k: int, ks: list[int], server_url: str,
                     instruction: str | None = None) -> tuple[dict[str, float], dict[str, float], dict[str, list[str]]]:
    """BM25 metrics, reranked metrics and reranked lists, computed without rerankd.evaluation's pipeline."""
    ds = load_beir(DATA / dataset)
    tokenizer = Tokenizer(language)
    corpus_tokens = tokenizer.tokenize(ds.corpus_texts)
    bm25 = {q: [ds.corpus_ids[i] for i, _ in bm25_top_k(corpus_tokens, tokenizer(text), top_k)]
            for q, text in ds.queries.items()}
    text_of = dict(zip(ds.corpus_ids, ds.corpus_texts, strict=True))
    reranked: dict[str, list[str]] = {}
    for q, candidates in bm25.items():
        body: dict[str, Any] = {"query": ds.queries[q], "documents": [text_of[d] for d in candidates]}
        if instruction is not None:
            body["instruction"] = instruction
        results = httpx.post(f"{server_url}/v1/rerank", json=body, timeout=60).raise_for_status().json()["results"]
        reranked[q] = [candidates[r["index"]] for r in results]  # the server's order: score desc, ties by index
    return mean_metrics(ds.qrels, bm25, ks), mean_metrics(ds.qrels, reranked, ks), reranked


def assert_metrics_equal(got: dict[str, float], expected: dict[str, float]) -> None:
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name


def rerank_requests(server_url: str) -> float:
    text = httpx.get(f"{server_url}/metrics").text
    match = re.search(r'^rerankd_requests_total\{route="/v1/rerank",status="200",task="rerank"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize(("dataset", "language", "top_k"), [("beir-mini", "en", 5), ("beir-mini-zh", "zh", 10)])
def test_numbers_match_an_independent_computation(server_url: str, tmp_path: Path, dataset: str, language: str,
                                                  top_k: int) -> None:
    ks = [1, 3, 5, 10]
    out = tmp_path / "report.json"
    result = run_eval("--dataset", str(DATA / dataset), "--reranker", server_url, "--top-k", str(top_k),
                      "--k", "10,5,3,1", "--output", str(out), "--per-query")  # --language auto
    report = json.loads(out.read_text())
    bm25, reranked, lists = expected_numbers(dataset, language, top_k, ks, server_url)

    assert report["language"] == language and report["ks"] == ks and report["top_k"] == top_k
    assert report["model"] == "tiny-reranker" and report["queries"] == len(load_beir(DATA / dataset).queries)
    assert_metrics_equal(report["bm25"], bm25)
    assert_metrics_equal(report["runs"][0]["reranked"], reranked)
    assert report["runs"][0]["instruction"] is None
    for name in bm25:
        lift = report["runs"][0]["lift"][name]
        assert lift == (None if bm25[name] == 0 else pytest.approx((reranked[name] - bm25[name]) / bm25[name]))
    assert {row["query_id"]: row["reranked_top"][0] for row in report["per_query"]} == lists
    assert reranked != bm25  # the random model reorders: the reranked check is not the BM25 check again
    # The table shows the same numbers.
    line = next(ln for ln in result.output.splitlines() if ln.startswith("ndcg@10 "))
    assert line.split()[1:3] == [f"{bm25['ndcg@10']:.4f}", f"{reranked['ndcg@10']:.4f}"]
    assert "per query:" in result.output


def test_resume_skips_finished_queries(server_url: str, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    common = ["--dataset", str(DATA / "beir-mini"), "--reranker", server_url, "--top-k", "5", "--output", str(out)]
    checkpoint = tmp_path / "r.checkpoint.jsonl"

    before = rerank_requests(server_url)
    run_eval(*common, "--max-queries", "4")  # an interrupted run: 4 of the 10 queries done
    assert len(checkpoint.read_text().splitlines()) == 4
    assert rerank_requests(server_url) - before == 1 + 4  # preflight + 4 queries

    before = rerank_requests(server_url)
    result = run_eval(*common)
    full = json.loads(out.read_text())
    assert rerank_requests(server_url) - before == 1 + 6  # only the 6 queries not on file
    assert full["runs"][0]["resumed_queries"] == 4 and "resumed 4 finished queries" in result.output

    with checkpoint.open("a") as f:
        f.write('{"run": "torn')  # killed mid-write
    before = rerank_requests(server_url)
    result = run_eval(*common)
    again = json.loads(out.read_text())
    assert rerank_requests(server_url) - before == 1  # everything came from the checkpoint
    assert again["runs"][0]["resumed_queries"] == 10 and "1 unreadable line(s)" in result.output
    assert again["runs"][0]["reranked"] == full["runs"][0]["reranked"] and again["bm25"] == full["bm25"]

    before = rerank_requests(server_url)
    run_eval(*common, "--no-resume")
    assert rerank_requests(server_url) - before == 1 + 10
    assert json.loads(out.read_text())["runs"][0]["reranked"] == full["runs"][0]["reranked"]

    # A change that changes the candidate lists (top-k) reuses nothing.
    before = rerank_requests(server_url)
    run_eval(*common[:-4], "--top-k", "4", "--output", str(out))
    assert rerank_requests(server_url) - before == 1 + 10


def test_instruction_sweep(server_url: str, tmp_path: Path) -> None:
    sweep = tmp_path / "instructions.txt"
    first = "Given a health question, retrieve medical passages that answer it"
    second = "Retrieve documents about cooking"
    sweep.write_text(f"# one instruction per line\n{first}\n\n{second}\n")
    out = tmp_path / "sweep.json"
    result = run_eval("--dataset", str(DATA / "beir-mini"), "--reranker", server_url, "--top-k", "5",
                      "--k", "1,5", "--instruction-sweep", str(sweep), "--output", str(out), "--no-resume")
    report = json.loads(out.read_text())
    assert [r["instruction"] for r in report["runs"]] == [None, first, second]
    rankings = []
    for run in report["runs"]:
        bm25, reranked, lists = expected_numbers("beir-mini", "en", 5, [1, 5], server_url, run["instruction"])
        assert_metrics_equal(run["reranked"], reranked)
        assert_metrics_equal(report["bm25"], bm25)
        rankings.append(lists)
    assert rankings[0] != rankings[1] != rankings[2]  # the instruction reached the model and changed its order
    assert "instruction sweep" in result.output and first[:40] in result.output

    # The same sweep from the environment, one instruction per line, after an explicit --instruction.
    result = run_eval("--dataset", str(DATA / "beir-mini"), "--reranker", server_url, "--top-k", "5", "--k", "1,5",
                      "--instruction", second, "--output", str(out),
                      env={"RERANKD_INSTRUCTION_SWEEP": f"{first}\n{second}"})
    report = json.loads(out.read_text())
    assert [r["instruction"] for r in report["runs"]] == [second, first]  # duplicates run once
    assert report["runs"][1]["resumed_queries"] == 10  # scored above, same settings: taken from the checkpoint
