"""rerankd's HTTP scores equal the Qwen3-Reranker model card's transformers recipe (float32, 1e-4)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rerankd.engine.prompt import PREFIX, SUFFIX, format_pair

MAX_LEN = 256  # the session server's --max-model-len

QUERY_ZH = "如何实现Python中的异步爬虫"
DOCS = [
    "使用 asyncio 和 aiohttp 可以实现高效的异步爬虫，配合信号量控制并发。",
    "def crawl(urls):\n    async with aiohttp.ClientSession() as s:\n"
    "        return await asyncio.gather(*map(s.get, urls))",
    "The Great Wall of China is visible from many places. " * 60,  # cut by --max-model-len
    "Python 的 requests 库是同步的。",
    "",
]


def card_scores(model_dir: Path, query: str, docs: list[str], instruction: str | None) -> list[float]:
    """The model card's code, verbatim apart from the model path and max_length."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    token_false_id = tokenizer.convert_tokens_to_ids("no")
    token_true_id = tokenizer.convert_tokens_to_ids("yes")
    prefix_tokens = tokenizer.encode(PREFIX, add_special_tokens=False)
    suffix_tokens = tokenizer.encode(SUFFIX, add_special_tokens=False)
    pairs = [format_pair(query, d, instruction) for d in docs]
    inputs = tokenizer(pairs, padding=False, truncation="longest_first", return_attention_mask=False,
                       max_length=MAX_LEN - len(prefix_tokens) - len(suffix_tokens))
    for i, ele in enumerate(inputs["input_ids"]):
        inputs["input_ids"][i] = prefix_tokens + ele + suffix_tokens
    inputs = tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=MAX_LEN)
    with torch.no_grad():
        batch_scores = model(**inputs).logits[:, -1, :]
    true_vector = batch_scores[:, token_true_id]
    false_vector = batch_scores[:, token_false_id]
    batch_scores = torch.nn.functional.log_softmax(torch.stack([false_vector, true_vector], dim=1), dim=1)
    return batch_scores[:, 1].exp().tolist()


def by_index(results: list[dict]) -> list[float]:
    return [r["relevance_score"] for r in sorted(results, key=lambda r: r["index"])]


@pytest.mark.parametrize(
    ("query", "instruction"),
    [
        (QUERY_ZH, None),
        (QUERY_ZH, "Given a programming question, retrieve code or explanations that answer it"),
        ("how do I write an async web crawler in Python?", None),
    ],
)
def test_http_scores_match_model_card(server_url: str, tiny_model_dir: Path, query: str,
                                      instruction: str | None) -> None:
    body = {"query": query, "documents": DOCS, "instruction": instruction}
    answer = httpx.post(f"{server_url}/v1/rerank", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    ours = by_index(answer.json()["results"])
    reference = card_scores(tiny_model_dir, query, DOCS, instruction)
    assert max(abs(a - b) for a, b in zip(ours, reference, strict=True)) <= 1e-4
    # The random model must actually discriminate, or the comparison proves little.
    assert max(reference) - min(reference) > 0.05


def test_raw_scores_are_logit_differences(server_url: str, tiny_model_dir: Path) -> None:
    body = {"query": QUERY_ZH, "documents": DOCS, "raw_scores": True}
    raw = by_index(httpx.post(f"{server_url}/v1/rerank", json=body, timeout=60).json()["results"])
    reference = card_scores(tiny_model_dir, QUERY_ZH, DOCS, None)
    probs = torch.sigmoid(torch.tensor(raw, dtype=torch.float64)).tolist()
    assert max(abs(a - b) for a, b in zip(probs, reference, strict=True)) <= 1e-4


def test_tei_and_score_dialects_agree_with_rerank(server_url: str) -> None:
    docs = DOCS[:4]
    rerank = httpx.post(f"{server_url}/v1/rerank", json={"query": QUERY_ZH, "documents": docs}).json()
    tei = httpx.post(f"{server_url}/rerank", json={"query": QUERY_ZH, "texts": docs, "return_text": True}).json()
    score = httpx.post(f"{server_url}/v1/score", json={"text_1": QUERY_ZH, "text_2": docs}).json()
    expected = by_index(rerank["results"])
    assert [t["index"] for t in tei] == [r["index"] for r in rerank["results"]]
    assert all(abs(t["score"] - expected[t["index"]]) < 1e-6 and t["text"] == docs[t["index"]] for t in tei)
    assert [d["index"] for d in score["data"]] == list(range(len(docs)))
    assert all(abs(d["score"] - expected[d["index"]]) < 1e-6 for d in score["data"])
    assert score["object"] == "list" and score["data"][0]["object"] == "score"
