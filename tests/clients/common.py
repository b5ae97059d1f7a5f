"""What the client tests share: the running stack, the query and documents they rank, error checks."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx

QUERY = "What is the capital of France?"
DOCUMENTS = ["Paris is the capital and largest city of France.",
             "Berlin is the capital of Germany.",
             "The Eiffel Tower stands in Paris.",
             "Bananas are rich in potassium."]

# A key of the right shape that the gateway never issued.
WRONG_KEY = "rk-this-key-does-not-exist"
# What the gateway says for WRONG_KEY, and the stable part of its requests/min 429 (the wait in it varies).
RATE_LIMITED = "rate limit of 1 requests per minute reached for this key"


@dataclass(frozen=True)
class Stack:
    """A running ``rerankd up``: what it printed, and where its state lives."""

    gateway: str
    ui: str
    api_key: str
    admin_key: str
    data_dir: Path
    model: str  # the served model's name, as the gateway's /v1/models lists it

    def key(self, *, rpm: int | None = None) -> str:
        """A fresh API key made through the gateway's admin API (what `rerankd keys create` does)."""
        body: dict[str, object] = {"name": f"clients-{uuid.uuid4().hex[:10]}"}
        if rpm is not None:
            body["rpm"] = rpm
        answer = httpx.post(f"{self.gateway}/admin/keys", json=body,
                            headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=30)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["key"])


def gateway_message(stack: Stack, key: str) -> str:
    """The message the gateway itself gives for a rerank with ``key``: what a client must show."""
    answer = httpx.post(f"{stack.gateway}/v1/rerank", json={"query": "q", "documents": ["a"]},
                        headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert answer.status_code >= 400, answer.text
    return str(json.loads(answer.text)["error"]["message"])


def api_scores(stack: Stack) -> dict[str, float]:
    """Each document's score for QUERY from the gateway's own /v1/rerank: what a client must hand back."""
    answer = httpx.post(f"{stack.gateway}/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS},
                        headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=30)
    assert answer.status_code == 200, answer.text
    return {DOCUMENTS[r["index"]]: float(r["relevance_score"]) for r in answer.json()["results"]}


def assert_scores(stack: Stack, ranked: list[tuple[str, float | None]], count: int) -> None:
    """``ranked`` (text, score) as the client returned them: ``count`` of them, best first, each with the score the
    API gives that text (a client that mixes up indices or scores fails here)."""
    expected = api_scores(stack)
    assert len(ranked) == count, ranked
    for text, score in ranked:
        assert score is not None
        assert abs(score - expected[text]) < 1e-5, (text, score, expected[text])
    best = sorted(expected.values(), reverse=True)[:count]
    for (text, score), want in zip(ranked, best, strict=True):  # the best ``count``, best first
        assert score is not None and abs(score - want) < 1e-5, (text, score, want)
