"""The UI's upstream calls: :class:`rerankd.client.RerankClient` (and the search page's
:class:`~rerankd.ui.embedder.EmbeddingClient`) set up for a person at the page.

Why not the client's defaults: a person clicking "Rank" is waiting, so the UI does not retry (a 429 or 503
is shown at once with how long to wait, from ``Retry-After``), and every failure (an HTTP status, a
timeout, a refused connection, an answer that is not a rerank response) is one sentence saying what
happened and what to do, in the UI's own flags (``--gateway-url``, ``--api-key``, ``--timeout``; the
embedder's ``--embedding-url``, ``--embedding-api-key``).
"""

from __future__ import annotations

from rerankd.client import ErrorWording, RerankClient
from rerankd.ui.embedder import EmbeddingClient

__all__ = ["PageWording", "describe_status", "page_client", "page_embedder"]

_RERANKER = "a rerankd gateway or server"
_EMBEDDER = "an embedding model: a rerankd embedding server, or a gateway with an embedding pool"


def _wait_hint(retry_after: float | None) -> str:
    if retry_after is None:
        return "Try again in a moment."
    seconds = max(1, round(retry_after))
    return f"Try again in {seconds} second{'s' if seconds != 1 else ''} (Retry-After)."


def describe_status(status: int, detail: str, retry_after: float | None, url: str, *,
                    url_option: str = "--gateway-url", key_option: str = "--api-key", serves: str = _RERANKER) -> str:
    """The sentence for an HTTP error status: what it means for the person at the page, then the service's words.

    ``url_option``/``key_option`` are the flags to fix and ``serves`` what the URL should point at: the rank
    page's and the search page's embedder differ.
    """
    if status == 401:
        env = "RERANKD_" + key_option.lstrip("-").upper().replace("-", "_")
        what = (f"The service rejected the UI's API key (401 Unauthorized). Start `rerankd ui` with a valid "
                f"`{key_option}` (or {env}).")
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
        what = f"Nothing answers at {url} (404). Check `{url_option}`: it should point at {serves}."
    elif status >= 500:
        what = f"The service failed ({status}). {_wait_hint(retry_after)}"
    else:
        what = f"The service answered HTTP {status}."
    return f"{what} Service said: {detail}" if detail else what


class PageWording(ErrorWording):
    """Failures worded for the page: what happened, what to do, and the service's own words."""

    def __init__(self, service: str = "rerank", url_option: str = "--gateway-url", key_option: str = "--api-key",
                 serves: str = _RERANKER) -> None:
        super().__init__(url_option=url_option, key_option=key_option, timeout_option="--timeout")
        self.service = service
        self.serves = serves

    def unreachable(self, url: str, exc: Exception) -> str:
        return (f"Cannot reach the {self.service} service at {url} ({type(exc).__name__}: {exc}). "
                f"Check that it is running and that `{self.url_option}` is right.")

    def timed_out(self, url: str, timeout: float) -> str:
        return (f"No answer from {url} within {timeout:g} s (timeout). The service may be overloaded: "
                f"try fewer documents, try again later, or start the UI with a larger `{self.timeout_option}`.")

    def refused(self, status: int, detail: str, retry_after: float | None, url: str, request_id: str | None) -> str:
        message = describe_status(status, detail, retry_after, url, url_option=self.url_option,
                                  key_option=self.key_option, serves=self.serves)
        return f"{message} (request id {request_id})" if request_id else message

    def malformed(self, url: str, problem: str) -> str:
        return (f"{url} answered 200 but not with {'an' if self.service[0] in 'aeiou' else 'a'} {self.service} "
                f"response ({problem}). Check that `{self.url_option}` points at {self.serves}.")


def page_client(gateway_url: str, api_key: str | None = None, timeout: float = 60.0) -> RerankClient:
    """The client behind the page: no retries, no bound of its own (Gradio's queue limits concurrency)."""
    return RerankClient(gateway_url, api_key=api_key, timeout=timeout, max_retries=0, concurrency=None,
                        wording=PageWording(), user_agent="rerankd-ui")


def page_embedder(embedding_url: str, api_key: str | None = None, model: str | None = None,
                  timeout: float = 60.0) -> EmbeddingClient:
    """The search page's embedder: failures name ``--embedding-url`` / ``--embedding-api-key``, no retries."""
    wording = PageWording("embedding", "--embedding-url", "--embedding-api-key", _EMBEDDER)
    return EmbeddingClient(embedding_url, api_key=api_key, model=model, timeout=timeout, wording=wording)
