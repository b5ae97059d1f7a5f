"""What the client tests share: the running stack, the query and documents they rank, error checks."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
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
    model: str  # the served reranker's name, as the gateway's /v1/models lists it
    embed_model: str  # the served embedder's name

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


# What the embedding tests embed, and the tiny embedder's Matryoshka range (32 to its hidden size, 64).
TEXTS = ["Paris is the capital and largest city of France.", "Bananas are rich in potassium.", "天气很好"]
EMBED_DIMENSIONS = 64
OUT_OF_RANGE = "this model gives 32 to 64 dimensions"  # the 422's message for `dimensions` outside it


def api_vectors(stack: Stack, texts: str | list[str], **body: object) -> list[list[float]]:
    """The gateway's own ``/v1/embeddings`` float vectors for ``texts`` (``body``: dimensions, input_type, ...):
    what every embedding client must hand back."""
    answer = httpx.post(f"{stack.gateway}/v1/embeddings", timeout=30,
                        json={"input": texts, "model": stack.embed_model, "encoding_format": "float", **body},
                        headers={"Authorization": f"Bearer {stack.api_key}"})
    assert answer.status_code == 200, answer.text
    data = sorted(answer.json()["data"], key=lambda d: d["index"])
    return [d["embedding"] for d in data]


def assert_vectors(got: Sequence[Sequence[float]], want: Sequence[Sequence[float]], dimensions: int) -> None:
    """The same vectors, in order, each ``dimensions`` long, to 1e-6 (a client that reorders, truncates or
    re-encodes them fails here)."""
    assert len(got) == len(want), (len(got), len(want))
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w) == dimensions, (len(g), len(w), dimensions)
        assert max(abs(a - b) for a, b in zip(g, w, strict=True)) < 1e-6
        assert abs(sum(a * a for a in g) - 1) < 1e-5  # unit length, after any truncation
