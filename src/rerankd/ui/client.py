"""Calling the rerank API for the UI, and saying in one sentence what went wrong when it fails.

Why: a person clicking "Rank" cannot read a stack trace or a JSON error body. Every failure (an HTTP
status, a timeout, a refused connection, an answer that is not a rerank response) becomes a
:class:`RerankAPIError` whose message says what happened and what to do, including how long to wait
when the service sent ``Retry-After``. The API key is only ever put in the ``Authorization`` header;
no message contains it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from rerankd.http.headers import parse_retry_after

__all__ = [
    "RankedDocument",
    "RerankAPIError",
    "RerankClient",
    "RerankOutcome",
    "describe_status",
    "error_detail",
    "parse_retry_after",
    "rerank_url",
]

_MAX_DETAIL_CHARS = 300


@dataclass(frozen=True)
class RankedDocument:
    """One row of the ranking: 1-based ``rank``, the document's position in the request, its score and text."""

    rank: int
    index: int
    score: float
    text: str


@dataclass(frozen=True)
class RerankOutcome:
    """A successful answer, plus what the page reports next to it (latency measured by the UI)."""

    results: list[RankedDocument]
    model: str
    request_id: str
    prompt_tokens: int
    total_tokens: int
    latency_ms: float
    document_count: int = 0


class RerankAPIError(Exception):
    """A failed call; ``message`` is the human sentence shown on the page (never contains the API key)."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.request_id = request_id

    @property
    def title(self) -> str:
        """A short heading for the page's error box."""
        return f"Rerank failed (HTTP {self.status})" if self.status else "Rerank failed"


def rerank_url(base_url: str) -> str:
    """The endpoint to POST to: ``base_url`` as given when it already names a rerank route, else ``/v1/rerank``."""
    base = base_url.rstrip("/")
    return base if base.endswith("/rerank") else base + "/v1/rerank"


def error_detail(response: httpx.Response) -> str:
    """The service's own message: ``{"error": {"message"}}`` (rerankd), ``{"detail"}`` / ``{"message"}``, or text."""
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    message: Any = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = error.get("message")
        elif isinstance(error, str):
            message = error
        message = message or body.get("message") or body.get("detail")
    if message is None:
        message = response.text.strip() or response.reason_phrase
    text = message if isinstance(message, str) else str(message)
    return text if len(text) <= _MAX_DETAIL_CHARS else text[: _MAX_DETAIL_CHARS - 1] + "…"


def _wait_hint(retry_after: float | None) -> str:
    if retry_after is None:
        return "Try again in a moment."
    seconds = max(1, round(retry_after))
    return f"Try again in {seconds} second{'s' if seconds != 1 else ''} (Retry-After)."


def describe_status(status: int, detail: str, retry_after: float | None, url: str) -> str:
    """The sentence for an HTTP error status: what it means for the person at the page, then the service's words."""
    if status == 401:
        what = ("The service rejected the UI's API key (401 Unauthorized). Start `rerankd ui` with a valid "
                "`--api-key` (or RERANKD_API_KEY).")
    elif status == 403:
        what = "This API key is not allowed to do that (403 Forbidden). Ask an admin for access or use another key."
    elif status == 413:
        what = "Too much input (413): send fewer or shorter documents."
    elif status in (400, 422):
        what = f"The service refused the request ({status}): fix the input below."
    elif status == 429:
        what = f"Rate limited (429): this API key sent too many requests or tokens. {_wait_hint(retry_after)}"
    elif status == 503:
        what = f"The service is overloaded or not ready yet (503). {_wait_hint(retry_after)}"
    elif status == 404:
        what = f"Nothing answers at {url} (404). Check `--gateway-url`: it should point at a rerankd gateway or server."
    elif status >= 500:
        what = f"The service failed ({status}). {_wait_hint(retry_after)}"
    else:
        what = f"The service answered HTTP {status}."
    return f"{what} Service said: {detail}" if detail else what


class RerankClient:
    """Async client for ``POST /v1/rerank``; one short-lived connection pool per call.

    Why per call: the UI's handlers run on Gradio's event loop and a pooled client would be bound to
    whichever loop created it; a rerank request dwarfs the cost of a new TCP connection.
    """

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.url = rerank_url(base_url)
        self._api_key = api_key
        self.timeout = timeout

    def __repr__(self) -> str:  # the key must not leak through logs or error pages either
        return f"RerankClient(url={self.url!r}, timeout={self.timeout!r})"

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "rerankd-ui"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    async def rerank(
        self, query: str, documents: list[str], *, instruction: str | None = None, top_n: int | None = None
    ) -> RerankOutcome:
        """Rank ``documents`` for ``query``; raise :class:`RerankAPIError` with a human message on any failure."""
        payload: dict[str, Any] = {"query": query, "documents": documents, "return_documents": True}
        if instruction:
            payload["instruction"] = instruction
        if top_n:
            payload["top_n"] = top_n
        timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0))
        started = time.perf_counter()
        try:
            async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http:
                response = await http.post(self.url, json=payload, headers=self._headers())
        except httpx.TimeoutException:
            raise RerankAPIError(
                f"No answer from {self.url} within {self.timeout:g} s (timeout). The service may be overloaded: "
                "try fewer documents, try again later, or start the UI with a larger `--timeout`."
            ) from None
        except httpx.HTTPError as exc:
            raise RerankAPIError(
                f"Cannot reach the rerank service at {self.url} ({type(exc).__name__}: {exc}). "
                "Check that it is running and that `--gateway-url` is right."
            ) from None
        latency_ms = (time.perf_counter() - started) * 1000.0
        request_id = response.headers.get("X-Request-ID")
        if response.status_code != 200:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            message = describe_status(response.status_code, error_detail(response), retry_after, self.url)
            if request_id:
                message += f" (request id {request_id})"
            raise RerankAPIError(message, status=response.status_code, retry_after=retry_after, request_id=request_id)
        return self._outcome(response, documents, latency_ms)

    def _outcome(self, response: httpx.Response, documents: list[str], latency_ms: float) -> RerankOutcome:
        try:
            body = response.json()
            rows = [
                RankedDocument(
                    rank=rank,
                    index=int(item["index"]),
                    score=float(item["relevance_score"]),
                    text=(item.get("document") or {}).get("text") or documents[int(item["index"])],
                )
                for rank, item in enumerate(body["results"], start=1)
            ]
            usage = body.get("usage") or {}
            return RerankOutcome(
                results=rows, model=str(body.get("model", "")), request_id=str(body.get("id", "")),
                prompt_tokens=int(usage.get("prompt_tokens", 0)), total_tokens=int(usage.get("total_tokens", 0)),
                latency_ms=latency_ms, document_count=len(documents),
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise RerankAPIError(
                f"{self.url} answered 200 but not with a rerank response ({type(exc).__name__}: {exc}). "
                "Check that `--gateway-url` points at a rerankd gateway or server."
            ) from None
