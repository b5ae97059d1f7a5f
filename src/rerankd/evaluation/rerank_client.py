"""An async client of the rerank API (``POST /v1/rerank``) for evaluation runs.

Why not a plain loop of requests: an evaluation sends thousands of requests to a server (or a gateway)
that may be busy, rate-limited or restarting. The client keeps a bounded number in flight, waits as
long as a 429/503 ``Retry-After`` asks before trying again, retries dropped connections with backoff,
and, when a list is larger than the server accepts (413), splits it: a Qwen3-Reranker score depends
only on its (query, document) pair, so the split is exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from rerankd.http.headers import parse_retry_after

__all__ = ["RerankClient", "RerankError", "rerank_url"]

RETRY_STATUSES = frozenset({429, 502, 503, 504})


class RerankError(Exception):
    """The reranker refused a request for good (or could not be reached); the message says what to fix."""


def rerank_url(reranker: str) -> str:
    """``http://host:8000`` → ``http://host:8000/v1/rerank``; a URL already ending in a rerank route is kept."""
    parts = urlsplit(reranker)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{reranker!r} is not an http(s) URL, e.g. http://127.0.0.1:8000")
    path = parts.path.rstrip("/")
    if path.endswith("/rerank"):
        return reranker.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path}/v1/rerank"


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if body.get("detail"):
            return str(body["detail"])
    return str(body)[:300]


class RerankClient:
    """Scores documents against a query through the rerank API, with the limits described above."""

    def __init__(
        self,
        reranker: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        concurrency: int = 8,
        max_documents: int = 1000,
        timeout: float = 300.0,
        max_retries: int = 8,
        backoff: float = 0.5,
        max_wait: float = 60.0,
    ):
        self.url = rerank_url(reranker)
        self.model = model
        self.max_documents = max_documents
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.served_model: str | None = None
        self.requests_sent = 0
        self.retries = 0
        self._semaphore = asyncio.Semaphore(concurrency)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            headers=headers, timeout=timeout,
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    async def __aenter__(self) -> RerankClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def preflight(self) -> None:
        """One tiny request with few retries: a wrong URL, key or model fails in seconds, before any real work."""
        await self._rerank("rerankd eval preflight", ["preflight"], None, max_retries=2)

    async def scores(self, query: str, documents: Sequence[str], instruction: str | None = None) -> list[float]:
        """The relevance score of each document, in input order (``[]`` for no documents)."""
        scores: list[float] = []
        start = 0
        while start < len(documents):
            size = self.max_documents
            chunk = documents[start:start + size]
            try:
                scores.extend(await self._rerank(query, chunk, instruction))
            except _TooLarge as exc:
                if len(chunk) == 1:
                    raise RerankError(f"{self.url} refused a single document (413): {exc}") from None
                # Halve the list size for this and every later request, and retry this chunk. Keyed on the
                # refused chunk's size, so concurrent refusals of same-sized lists halve it only once.
                self.max_documents = max(1, min(self.max_documents, len(chunk) // 2))
                continue
            start += len(chunk)
        return scores

    async def _rerank(self, query: str, documents: Sequence[str], instruction: str | None,
                      max_retries: int | None = None) -> list[float]:
        body: dict[str, Any] = {"query": query, "documents": list(documents), "return_documents": False}
        if self.model:
            body["model"] = self.model
        if instruction is not None:
            body["instruction"] = instruction
        max_retries = self.max_retries if max_retries is None else max_retries
        for attempt in range(max_retries + 1):
            wait: float | None
            async with self._semaphore:
                self.requests_sent += 1
                try:
                    response = await self._client.post(self.url, json=body)
                except httpx.TransportError as exc:
                    if attempt == max_retries:
                        raise RerankError(f"could not reach the reranker at {self.url} ({exc.__class__.__name__}: "
                                          f"{exc}); is it running? Check --reranker") from None
                    response, wait = None, None
                else:
                    if response.status_code == 200:
                        return self._parse(response, len(documents))
                    if response.status_code == 413:
                        raise _TooLarge(_error_message(response))
                    if response.status_code not in RETRY_STATUSES or attempt == max_retries:
                        raise RerankError(self._refusal(response))
                    wait = parse_retry_after(response.headers.get("Retry-After"))
            self.retries += 1
            delay = wait if wait is not None else self.backoff * 2 ** attempt
            await asyncio.sleep(min(delay, self.max_wait))
        raise AssertionError("unreachable")

    def _parse(self, response: httpx.Response, count: int) -> list[float]:
        try:
            body = response.json()
            self.served_model = body.get("model", self.served_model)
            by_index = {int(r["index"]): float(r["relevance_score"]) for r in body["results"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise RerankError(f"{self.url} answered 200 but not a rerank response ({exc!r}); "
                              "--reranker must point at a rerankd server or gateway") from None
        if sorted(by_index) != list(range(count)):
            raise RerankError(f"{self.url} returned scores for {len(by_index)} of {count} documents; "
                              "it must return every document when top_n is omitted")
        return [by_index[i] for i in range(count)]

    def _refusal(self, response: httpx.Response) -> str:
        status = response.status_code
        message = _error_message(response)
        hint = {401: " (pass --api-key or RERANKD_API_KEY)", 403: " (the key is not allowed this model or route)",
                404: " (check --model and the URL in --reranker)"}.get(status, "")
        return f"the reranker at {self.url} answered {status}: {message}{hint}"


class _TooLarge(Exception):
    """413 from the server: the document list (or body) is over its limit."""
