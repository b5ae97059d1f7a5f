"""The client of the rerank API (``POST /v1/rerank``) that rerankd's own tools use: the UI and ``rerankd eval``.

Why one client: both talk to a server or a gateway that may be busy, rate-limited or restarting, and both
must tell their user what went wrong in one sentence. The client

- waits as long as a 429/502/503/504 ``Retry-After`` asks (else backs off exponentially) and retries up to
  ``max_retries`` times; dropped connections and timeouts are retried the same way;
- keeps at most ``concurrency`` requests in flight;
- raises :class:`RerankAPIError` for every failure, carrying the server's message, error type and status,
  its ``Retry-After`` and the request id, with a sentence worded for the caller (:class:`ErrorWording`:
  which flags to fix is the caller's to say);
- splits a document list the server refuses as too large (413) in :meth:`RerankClient.scores`: a
  Qwen3-Reranker score depends only on its (query, document) pair, so the split is exact.

Inside ``async with`` the client keeps one connection pool; outside it, each call opens its own (the UI's
handlers run on Gradio's event loop, and a pool is bound to the loop that made it). The API key is only
ever put in the ``Authorization`` header: no message and no ``repr`` contains it. The transport
(:class:`ServiceClient`) is shared with the embedding client (:mod:`rerankd.embedding_client`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from rerankd.http.headers import parse_retry_after

__all__ = [
    "RETRY_STATUSES",
    "ErrorWording",
    "RankedDocument",
    "RerankAPIError",
    "RerankClient",
    "RerankOutcome",
    "ServiceClient",
    "error_detail",
    "error_type",
    "refusal_error",
    "rerank_url",
    "route_url",
]

_Client = TypeVar("_Client", bound="ServiceClient")
_Error = TypeVar("_Error", bound="RerankAPIError")
RETRY_STATUSES = frozenset({429, 502, 503, 504})
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
    """A successful answer, with the latency the client measured (first attempt to answer, retries included)."""

    results: list[RankedDocument]
    model: str
    request_id: str
    prompt_tokens: int
    total_tokens: int
    latency_ms: float
    document_count: int = 0


class RerankAPIError(Exception):
    """A failed call. ``message`` is the sentence for the caller's user; the other fields are what the
    service said: ``status`` (None when no HTTP answer came), ``detail`` (its message), ``error_type``,
    ``retry_after`` (seconds) and ``request_id``."""

    def __init__(self, message: str, *, url: str, status: int | None = None, detail: str | None = None,
                 error_type: str | None = None, retry_after: float | None = None,
                 request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.url = url
        self.status = status
        self.detail = detail
        self.error_type = error_type
        self.retry_after = retry_after
        self.request_id = request_id

    @property
    def title(self) -> str:
        """A short heading for an error box."""
        return f"Rerank failed (HTTP {self.status})" if self.status else "Rerank failed"


def rerank_url(base_url: str) -> str:
    """``http://host:8000`` → ``http://host:8000/v1/rerank``; a URL already ending in a rerank route is kept.

    Raises ``ValueError`` for anything but an http(s) URL, so a command can name its flag.
    """
    return route_url(base_url, "rerank", "http://127.0.0.1:8000")


def route_url(base_url: str, route: str, example: str) -> str:
    """``base_url`` with ``/v1/{route}`` appended, unless it already ends in ``/{route}``; shared by every client.

    Raises ``ValueError`` (naming ``example``) for anything but an http(s) URL.
    """
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{base_url!r} is not an http(s) URL, e.g. {example}")
    path = parts.path.rstrip("/")
    if path.endswith(f"/{route}"):
        return base_url.rstrip("/")
    return f"{parts.scheme}://{parts.netloc}{path}/v1/{route}"


def _json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def error_detail(response: httpx.Response) -> str:
    """The service's own message: ``{"error": {"message"}}`` (rerankd), ``{"detail"}`` / ``{"message"}``, or text."""
    body = _json_body(response)
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


def error_type(response: httpx.Response) -> str | None:
    """The service's error type (``{"error": {"type"}}``, e.g. ``rate_limited``), when it names one."""
    body = _json_body(response)
    error = body.get("error") if isinstance(body, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    return str(kind) if kind else None


class ErrorWording:
    """The sentence for each kind of failure, naming the caller's flags.

    This default is a command line's one-line wording (``rerankd eval``: ``--reranker``, ``--api-key``,
    ``--timeout``); the UI words the same failures for a person at its page (``rerankd.ui.upstream``).
    ``service`` and ``answer`` name what is called (``reranker`` / ``rerank``; the embedding client passes
    ``embedding server`` / ``embedding``), so one wording serves both APIs.
    """

    def __init__(self, url_option: str = "--reranker", key_option: str = "--api-key",
                 timeout_option: str = "--timeout", *, service: str = "reranker", answer: str = "rerank",
                 model_option: str = "--model") -> None:
        self.url_option = url_option
        self.key_option = key_option
        self.timeout_option = timeout_option
        self.model_option = model_option
        self.service = service
        self.answer = answer

    def unreachable(self, url: str, exc: Exception) -> str:
        return (f"could not reach the {self.service} at {url} ({type(exc).__name__}: {exc}); is it running? "
                f"Check {self.url_option}")

    def timed_out(self, url: str, timeout: float) -> str:
        return (f"no answer from the {self.service} at {url} within {timeout:g} s (timeout); send fewer documents "
                f"or raise {self.timeout_option}")

    def refused(self, status: int, detail: str, retry_after: float | None, url: str, request_id: str | None) -> str:
        env = "RERANKD_" + self.key_option.lstrip("-").upper().replace("-", "_")
        hint = {401: f" (pass {self.key_option} or {env})", 403: " (the key is not allowed this model or route)",
                404: f" (check {self.model_option} and the URL in {self.url_option})"}.get(status, "")
        return f"the {self.service} at {url} answered {status}: {detail}{hint}"

    def malformed(self, url: str, problem: str) -> str:
        return (f"{url} answered 200 but not a{'n' if self.answer[:1] in 'aeiou' else ''} {self.answer} response "
                f"({problem}); {self.url_option} must point at a rerankd server or gateway")


class ServiceClient:
    """The transport every rerankd API client shares: one pool, the in-flight bound, retries and errors.

    Why a base class: the rerank and the embedding clients differ only in the body they send and the answer
    they read; how a busy, rate-limited or restarting service is ridden out must be the same code for both.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        max_wait: float = 60.0,
        concurrency: int | None = 8,
        wording: ErrorWording | None = None,
        user_agent: str = "rerankd",
    ) -> None:
        self.url = url
        self.model = model
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_wait = max_wait
        self.wording = wording or ErrorWording()
        self.served_model: str | None = None
        self.requests_sent = 0
        self.retries = 0
        self._api_key = api_key
        self._user_agent = user_agent
        self._connections = concurrency or 16
        self._semaphore = asyncio.Semaphore(concurrency) if concurrency else None
        self._pool: httpx.AsyncClient | None = None

    def __repr__(self) -> str:  # the key must not leak through logs or error pages
        return (f"{type(self).__name__}(url={self.url!r}, timeout={self.timeout!r}, "
                f"max_retries={self.max_retries!r})")

    async def __aenter__(self: _Client) -> _Client:
        self._pool = self._new_http()
        return self

    async def __aexit__(self, *exc: object) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()

    def _new_http(self) -> httpx.AsyncClient:
        headers = {"Accept": "application/json", "User-Agent": self._user_agent}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        limits = httpx.Limits(max_connections=self._connections, max_keepalive_connections=self._connections)
        timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0))
        return httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits, follow_redirects=False)

    @asynccontextmanager
    async def _http(self) -> AsyncIterator[httpx.AsyncClient]:
        if self._pool is not None:
            yield self._pool
        else:
            async with self._new_http() as http:
                yield http

    async def _call(self, body: dict[str, Any], max_retries: int | None = None) -> httpx.Response:
        """POST ``body`` until a 200 comes back, retrying what may pass later; raise :class:`RerankAPIError`."""
        retries = self.max_retries if max_retries is None else max_retries
        async with self._http() as http:
            attempt = 0
            while True:
                answer = await self._attempt(http, body)
                if isinstance(answer, httpx.Response):
                    return answer
                failure = answer
                if attempt >= retries or (failure.status is not None and failure.status not in RETRY_STATUSES):
                    raise failure
                delay = failure.retry_after if failure.retry_after is not None else self.backoff * 2 ** attempt
                self.retries += 1
                attempt += 1
                await asyncio.sleep(min(delay, self.max_wait))

    async def _attempt(self, http: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response | RerankAPIError:
        """One POST: the 200 response, or the error it ends with (raised by the caller unless retried)."""
        if self._semaphore is None:
            return await self._post(http, body)
        async with self._semaphore:
            return await self._post(http, body)

    async def _post(self, http: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response | RerankAPIError:
        self.requests_sent += 1
        try:
            response = await http.post(self.url, json=body)
        except httpx.TimeoutException:
            return RerankAPIError(self.wording.timed_out(self.url, self.timeout), url=self.url)
        except httpx.HTTPError as exc:
            return RerankAPIError(self.wording.unreachable(self.url, exc), url=self.url)
        return response if response.status_code == 200 else self._refusal(response)

    def _refusal(self, response: httpx.Response) -> RerankAPIError:
        return refusal_error(response, url=self.url, wording=self.wording, error_class=RerankAPIError)


def refusal_error(response: httpx.Response, *, url: str, wording: ErrorWording, error_class: type[_Error],
                  explain: Callable[[int, str], str] | None = None) -> _Error:
    """The error a non-200 answer ends a call with: status, detail, ``Retry-After`` and request id read once,
    for the rerank, embedding and UI clients alike; ``explain(status, detail)``, when given, words it instead
    of ``wording.refused``."""
    status = response.status_code
    detail = error_detail(response)
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    request_id = response.headers.get("X-Request-ID")
    if explain is not None:
        message = explain(status, detail)
    else:
        message = wording.refused(status, detail, retry_after, url, request_id)
    return error_class(message, url=url, status=status, detail=detail, error_type=error_type(response),
                       retry_after=retry_after, request_id=request_id)


class RerankClient(ServiceClient):
    """Calls the rerank API with the retries, bound and errors described in the module docstring."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 2,
        backoff: float = 0.5,
        max_wait: float = 60.0,
        concurrency: int | None = 8,
        max_documents: int = 1000,
        wording: ErrorWording | None = None,
        user_agent: str = "rerankd",
    ) -> None:
        super().__init__(rerank_url(base_url), api_key=api_key, model=model, timeout=timeout,
                         max_retries=max_retries, backoff=backoff, max_wait=max_wait, concurrency=concurrency,
                         wording=wording, user_agent=user_agent)
        self.max_documents = max_documents  # lowered by scores() when the server answers 413

    async def rerank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        instruction: str | None = None,
        top_n: int | None = None,
        return_documents: bool = True,
        max_retries: int | None = None,
    ) -> RerankOutcome:
        """Rank ``documents`` for ``query``, retrying what may pass later; raise :class:`RerankAPIError` otherwise."""
        body: dict[str, Any] = {"query": query, "documents": list(documents), "return_documents": return_documents}
        if self.model:
            body["model"] = self.model
        if instruction is not None:
            body["instruction"] = instruction
        if top_n is not None:
            body["top_n"] = top_n
        started = time.perf_counter()
        response = await self._call(body, max_retries)
        return self._outcome(response, body["documents"], started)

    def _outcome(self, response: httpx.Response, documents: list[str], started: float) -> RerankOutcome:
        latency_ms = (time.perf_counter() - started) * 1000.0
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
            outcome = RerankOutcome(
                results=rows, model=str(body.get("model", "")), request_id=str(body.get("id", "")),
                prompt_tokens=int(usage.get("prompt_tokens", 0)), total_tokens=int(usage.get("total_tokens", 0)),
                latency_ms=latency_ms, document_count=len(documents),
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise RerankAPIError(self.wording.malformed(self.url, f"{type(exc).__name__}: {exc}"),
                                 url=self.url, status=200) from None
        self.served_model = outcome.model or self.served_model
        return outcome

    async def preflight(self) -> None:
        """One tiny request with few retries: a wrong URL, key or model fails in seconds, before any real work."""
        await self.rerank("rerankd preflight", ["preflight"], return_documents=False,
                          max_retries=min(2, self.max_retries))

    async def scores(self, query: str, documents: Sequence[str], instruction: str | None = None) -> list[float]:
        """The relevance score of each document, in input order (``[]`` for no documents).

        A list the server refuses as too large (413) is halved, for this call and every later one, until
        it passes; concurrent refusals of same-sized lists halve it only once (keyed on the refused size).
        """
        scores: list[float] = []
        start = 0
        while start < len(documents):
            chunk = documents[start:start + self.max_documents]
            try:
                outcome = await self.rerank(query, chunk, instruction=instruction, return_documents=False)
            except RerankAPIError as exc:
                if exc.status != 413:
                    raise
                if len(chunk) == 1:
                    raise RerankAPIError(f"{self.url} refused a single document (413): {exc.detail}", url=self.url,
                                         status=413, detail=exc.detail, error_type=exc.error_type,
                                         request_id=exc.request_id) from None
                self.max_documents = max(1, min(self.max_documents, len(chunk) // 2))
                continue
            scores.extend(self._in_input_order(outcome, len(chunk)))
            start += len(chunk)
        return scores

    def _in_input_order(self, outcome: RerankOutcome, count: int) -> list[float]:
        by_index = {row.index: row.score for row in outcome.results}
        if sorted(by_index) != list(range(count)):
            raise RerankAPIError(f"{self.url} returned scores for {len(by_index)} of {count} documents; it must "
                                 "return every document when top_n is omitted", url=self.url, status=200)
        return [by_index[i] for i in range(count)]
