"""The search page's calls to ``POST /v1/embeddings`` (a rerankd server or gateway, or any OpenAI-compatible one).

Why its own small client rather than the OpenAI SDK: the page needs what :class:`rerankd.client.RerankClient`
gives the rank page, on the same terms: no retries (a person is waiting), one sentence per failure naming
the UI's own flags (``--embedding-url``, ``--embedding-api-key``, ``--timeout``), and the API key kept in the
``Authorization`` header only (not in any message or ``repr``). Vectors are asked for as base64 (little-endian
float32, docs/embeddings.md): a quarter of the JSON a thousand float vectors would take.

Queries are embedded as queries (the model card's ``Instruct: {instruction}\\nQuery:`` via the body's
``instruction``, or ``input_type: query`` for the default instruction); passages as documents, with nothing
before them.
"""

from __future__ import annotations

import base64
import binascii
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

from rerankd.client import ErrorWording, RerankAPIError, error_type, refusal_error

__all__ = ["EmbeddingAPIError", "EmbeddingClient", "Embeddings", "embeddings_url"]

_VERSION = re.compile(r"/v\d+$")


class EmbeddingAPIError(RerankAPIError):
    """A failed embedding call: the fields of :class:`RerankAPIError`, under its own heading."""

    @property
    def title(self) -> str:
        return f"Embedding failed (HTTP {self.status})" if self.status else "Embedding failed"


@dataclass(frozen=True)
class Embeddings:
    """The vectors of one call, in input order (rows of ``vectors``), and what the service said about them."""

    vectors: np.ndarray
    model: str
    prompt_tokens: int
    latency_ms: float


def embeddings_url(base_url: str) -> str:
    """``http://gw:8080`` → ``http://gw:8080/v1/embeddings``; a URL ending in ``/embeddings`` is kept.

    A rerank URL (``.../v1/rerank``, ``.../v2/rerank``: what ``--gateway-url`` may be) becomes the same
    service's embedding route, so the default "the same upstream as the reranker" holds for it too.
    Raises ``ValueError`` for anything but an http(s) URL.
    """
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{base_url!r} is not an http(s) URL, e.g. http://127.0.0.1:8080")
    path = parts.path.rstrip("/")
    if path.endswith("/embeddings"):
        return f"{parts.scheme}://{parts.netloc}{path}"
    path = _VERSION.sub("", path.removesuffix("/rerank"))
    return f"{parts.scheme}://{parts.netloc}{path}/v1/embeddings"


def _decode(item: Any, dimensions: int | None) -> np.ndarray:
    """One ``data[i].embedding``: base64 float32 (what was asked for) or a float list (what some services send)."""
    embedding = item["embedding"]
    if isinstance(embedding, str):
        try:
            vector = np.frombuffer(base64.b64decode(embedding, validate=True), dtype="<f4")
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"an embedding is not base64 float32 ({exc})") from None
    elif isinstance(embedding, list) and all(isinstance(x, int | float) for x in embedding):
        vector = np.asarray(embedding, dtype=np.float32)
    else:
        raise ValueError("an embedding is neither base64 nor a list of numbers")
    if vector.size == 0 or (dimensions is not None and vector.size != dimensions):
        raise ValueError(f"vectors of {dimensions} and {vector.size} dimensions in one answer")
    return vector


def vectors_from_answer(body: Any, count: int) -> tuple[np.ndarray, str, int]:
    """The ``(count, d)`` float32 matrix in input order, the model name and prompt tokens of an OpenAI answer.

    Raises ``ValueError`` (``KeyError``/``TypeError`` for a wrong shape) when the answer is not one.
    """
    data = body["data"]
    if not isinstance(data, list) or len(data) != count:
        raise ValueError(f"{len(data) if isinstance(data, list) else 'no'} vectors for {count} inputs")
    rows: list[np.ndarray | None] = [None] * count
    dimensions: int | None = None
    for position, item in enumerate(data):
        index = int(item.get("index", position))
        if not 0 <= index < count or rows[index] is not None:
            raise ValueError(f"index {index} is out of range or repeated")
        rows[index] = vector = _decode(item, dimensions)
        dimensions = vector.size
    usage = body.get("usage") or {}
    return np.stack([r for r in rows if r is not None]), str(body.get("model", "")), int(usage.get("prompt_tokens", 0))


class EmbeddingClient:
    """Calls ``/v1/embeddings`` for the page, ``batch_size`` inputs a request (halved while the service says 413)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 60.0,
        batch_size: int = 64,
        wording: ErrorWording | None = None,
        user_agent: str = "rerankd-ui",
    ) -> None:
        self.url = embeddings_url(base_url)
        self.model = model
        self.timeout = timeout
        self.batch_size = batch_size
        self.wording = wording or ErrorWording("--embedding-url", "--embedding-api-key")
        self._api_key = api_key
        self._user_agent = user_agent

    def __repr__(self) -> str:  # the key must not leak through logs or error pages
        return f"EmbeddingClient(url={self.url!r}, model={self.model!r}, timeout={self.timeout!r})"

    def _http(self) -> httpx.AsyncClient:
        # A client per call, as the rank page's: Gradio's handlers run on its event loop, a pool is bound to one.
        headers = {"Accept": "application/json", "User-Agent": self._user_agent}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0))
        return httpx.AsyncClient(headers=headers, timeout=timeout, follow_redirects=False)

    async def embed(self, texts: Sequence[str], *, query: bool = False, instruction: str | None = None) -> Embeddings:
        """Embed ``texts`` as queries (with ``instruction``, empty = the model's default) or as documents.

        Raises :class:`EmbeddingAPIError` for every failure.
        """
        started = time.perf_counter()
        side: dict[str, Any] = {}
        if query:
            side = {"instruction": instruction} if instruction else {"input_type": "query"}
        parts: list[np.ndarray] = []
        model, tokens, start = "", 0, 0
        async with self._http() as http:
            while start < len(texts):
                chunk = list(texts[start:start + self.batch_size])
                body: dict[str, Any] = {"input": chunk, "encoding_format": "base64", **side}
                if self.model:
                    body["model"] = self.model
                try:
                    vectors, model, used = await self._post(http, body)
                except EmbeddingAPIError as exc:
                    if exc.status == 413 and len(chunk) > 1:
                        self.batch_size = max(1, len(chunk) // 2)
                        continue
                    raise
                parts.append(vectors)
                tokens += used
                start += len(chunk)
        if parts and len({p.shape[1] for p in parts}) > 1:
            raise self._malformed("vectors of different dimensions across requests")
        matrix = np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
        return Embeddings(matrix, model, tokens, (time.perf_counter() - started) * 1000.0)

    async def _post(self, http: httpx.AsyncClient, body: dict[str, Any]) -> tuple[np.ndarray, str, int]:
        try:
            response = await http.post(self.url, json=body)
        except httpx.TimeoutException:
            raise EmbeddingAPIError(self.wording.timed_out(self.url, self.timeout), url=self.url) from None
        except httpx.HTTPError as exc:
            raise EmbeddingAPIError(self.wording.unreachable(self.url, exc), url=self.url) from None
        if response.status_code != 200:
            raise self._refusal(response)
        try:
            return vectors_from_answer(response.json(), len(body["input"]))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise self._malformed(f"{type(exc).__name__}: {exc}") from None

    def _malformed(self, problem: str) -> EmbeddingAPIError:
        return EmbeddingAPIError(self.wording.malformed(self.url, problem), url=self.url, status=200)

    def _refusal(self, response: httpx.Response) -> EmbeddingAPIError:
        # A reranker's server: the URL is wrong, not the input.
        explain = self._serves_a_reranker if error_type(response) == "wrong_task" else None
        return refusal_error(response, url=self.url, wording=self.wording, error_class=EmbeddingAPIError,
                             explain=explain)

    def _serves_a_reranker(self, status: int, detail: str) -> str:
        return (f"{self.url} serves a reranker, not an embedding model (HTTP {status}). Point "
                f"`{self.wording.url_option}` at an embedding server or a gateway with an embedding pool. "
                f"Service said: {detail}")
