"""The client of the embedding API (``POST /v1/embeddings``) that ``rerankd eval``'s dense first stage uses.

Why over HTTP, as the rerank stage: the vectors that matter are those of the service users run (same
tokenizer, truncation, instruction and ``dimensions``), from a ``rerankd serve`` of an embedding model or a
gateway in front of one. The transport (pool, in-flight bound, retries after ``Retry-After``, one-sentence
errors) is :class:`rerankd.client.ServiceClient`, shared with the rerank client.

What this adds:

- queries and documents are embedded as the Qwen3-Embedding card does: documents plain
  (``input_type: document``), queries with ``Instruct: {instruction}\\nQuery:`` (``input_type: query``, the
  server's default instruction unless one is given); see docs/embeddings.md;
- vectors travel as base64 float32 (a quarter of the JSON floats' bytes, exactly the same numbers);
- :meth:`EmbeddingClient.embed_all` sends a long list in batches of ``batch_size`` inputs, ``concurrency``
  at a time, and halves the batch for the rest of the run when the server refuses one as too large (413):
  a vector depends only on its own input, so batching changes it by float32 rounding at most.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rerankd.client import ErrorWording, RerankAPIError, ServiceClient, route_url
from rerankd.tasks import gather_or_cancel

__all__ = ["EmbeddingClient", "embeddings_url"]


def embeddings_url(base_url: str) -> str:
    """``http://host:8001`` → ``http://host:8001/v1/embeddings``; a URL already ending in it is kept.

    Raises ``ValueError`` for anything but an http(s) URL, so a command can name its flag.
    """
    return route_url(base_url, "embeddings", "http://127.0.0.1:8001")


class EmbeddingClient(ServiceClient):
    """Embeds texts through ``/v1/embeddings`` with the shared retries, bound and errors."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        dimensions: int | None = None,
        batch_size: int = 64,
        timeout: float = 60.0,
        max_retries: int = 2,
        concurrency: int | None = 8,
        wording: ErrorWording | None = None,
        user_agent: str = "rerankd",
    ) -> None:
        wording = wording or ErrorWording("--embedding-url", "--embedding-api-key", service="embedding server",
                                          answer="embedding", model_option="--embedding-model")
        super().__init__(embeddings_url(base_url), api_key=api_key, model=model, timeout=timeout,
                         max_retries=max_retries, concurrency=concurrency, wording=wording, user_agent=user_agent)
        self.dimensions = dimensions
        self.batch_size = batch_size  # lowered by embed_all() when the server answers 413

    async def embed(self, texts: Sequence[str], *, query: bool, instruction: str | None = None,
                    max_retries: int | None = None) -> np.ndarray:
        """One request: a ``(len(texts), d)`` float32 array, row i the vector of ``texts[i]``."""
        body: dict[str, Any] = {"input": list(texts), "encoding_format": "base64",
                                "input_type": "query" if query else "document"}
        if query and instruction is not None:
            body["instruction"] = instruction
        if self.model:
            body["model"] = self.model
        if self.dimensions is not None:
            body["dimensions"] = self.dimensions
        response = await self._call(body, max_retries)
        try:
            answer = response.json()
            rows = sorted(answer["data"], key=lambda item: int(item["index"]))
            if [int(item["index"]) for item in rows] != list(range(len(texts))):
                raise ValueError(f"{len(rows)} vectors for {len(texts)} inputs")
            vectors = np.stack([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in rows])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RerankAPIError(self.wording.malformed(self.url, f"{type(exc).__name__}: {exc}"),
                                 url=self.url, status=200) from None
        self.served_model = str(answer.get("model") or "") or self.served_model
        return vectors.astype(np.float32, copy=False)

    async def preflight(self) -> None:
        """One tiny request with few retries: a wrong URL, key, model or task fails in seconds."""
        await self.embed(["rerankd preflight"], query=False, max_retries=min(2, self.max_retries))

    async def embed_all(self, texts: Sequence[str], *, query: bool, instruction: str | None = None,
                        progress: Callable[[int], object] | None = None) -> np.ndarray:
        """Every text's vector, in order, sent in batches (``concurrency`` in flight); ``progress(n)`` after
        each batch of n. A 413 halves the batch size for this call and every later one."""
        if not texts:
            return np.zeros((0, self.dimensions or 0), dtype=np.float32)
        parts: dict[int, np.ndarray] = {}

        async def embed_slice(start: int, end: int) -> None:
            while True:
                size = self.batch_size
                try:
                    # Embed what this slice holds in pieces of the current batch size (it may have shrunk).
                    pieces = [await self.embed(texts[i:min(i + size, end)], query=query, instruction=instruction)
                              for i in range(start, end, size)]
                except RerankAPIError as exc:
                    if exc.status != 413:
                        raise
                    if size == 1:
                        raise RerankAPIError(f"{self.url} refused a single input (413): {exc.detail}",
                                             url=self.url, status=413, detail=exc.detail,
                                             error_type=exc.error_type, request_id=exc.request_id) from None
                    self.batch_size = max(1, min(self.batch_size, size // 2))
                    continue
                parts[start] = np.concatenate(pieces)
                if progress is not None:
                    progress(end - start)
                return

        size = self.batch_size
        await gather_or_cancel([embed_slice(s, min(s + size, len(texts))) for s in range(0, len(texts), size)])
        return np.concatenate([parts[s] for s in sorted(parts)])
