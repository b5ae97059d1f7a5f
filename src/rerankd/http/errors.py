"""Mapping every failure to an HTTP answer, in one place.

Why: a client must always get a JSON body that names what to fix, and bad input must never become a
500. Typed :class:`~rerankd.errors.RerankdError` subclasses carry their status; FastAPI's validation
errors become 422 (400 for a body that is not JSON at all); anything unexpected becomes a 500 without a
stack trace in the body.

Two dialects of error body, so each client library reads the real reason:

- ``rerankd`` (every request but TEI's): ``{"error": {"message", "type", "code", "field"?}, "detail"}``.
  ``error.message`` is what OpenAI/Cohere-style clients read; ``detail`` (the same message) is what Jina-style
  clients read (LangChain's, LlamaIndex's and Haystack's ``JinaRerank``/``JinaRanker`` do ``resp.json()["detail"]``).
- ``tei`` (a request in TEI's shape, see :func:`set_error_dialect`): TEI's own ``{"error": "…", "error_type":
  "Validation"}`` with TEI's status codes (:func:`tei_status`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from rerankd.errors import RerankdError
from rerankd.http.disconnect import CLIENT_CLOSED_STATUS, ClientDisconnectedError
from rerankd.protocol import ErrorBody, FieldError, TEIErrorBody

__all__ = [
    "ERROR_RESPONSES",
    "TEI_ERROR_RESPONSES",
    "ErrorDialect",
    "error_body",
    "error_dialect",
    "error_headers",
    "error_response",
    "install_error_handlers",
    "set_error_dialect",
    "tei_error_body",
    "tei_status",
]

ErrorDialect = Literal["rerankd", "tei"]
_DIALECT_KEY = "rerankd_error_dialect"  # in the ASGI scope's "state", shared by every Request of one request

log = logging.getLogger(__name__)

_TYPES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 408: "request_timeout", 409: "conflict", 413: "payload_too_large",
          422: "invalid_request", 429: "rate_limited", 431: "headers_too_large", 503: "unavailable"}


# Documented on every route (OpenAPI): the statuses a client may get besides success, all with one body shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text} for code, text in {
        400: "Not JSON, or the query cannot fit the model length",
        401: "Missing or wrong credentials",
        403: "Credential lacks the right (admin routes)",
        404: "Unknown route or model",
        405: "Method not allowed",
        408: "Request body not received in time",
        409: "Conflict (a key name already taken)",
        413: "Body or document list too large",
        422: "Invalid fields (the message names them)",
        429: "Rate limited (Retry-After, X-RateLimit-*)",
        503: "Not ready, overloaded, or no replica could answer (Retry-After)",
    }.items()
}

# A route that also takes TEI's body (``POST /rerank``) answers either shape, TEI's for a TEI body.
TEI_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {**response, "model": ErrorBody | TEIErrorBody} for code, response in ERROR_RESPONSES.items()
}


def error_body(status: int, message: str, *, error_type: str | None = None, field: str | None = None,
               ) -> dict[str, Any]:
    """The one error shape, ``{"error": {"message", "type", "code", "field"?}, "detail": message}``
    (``protocol.ErrorBody``)."""
    error: dict[str, Any] = {"message": message, "type": error_type or _TYPES.get(status, "error"), "code": status}
    if field:
        error["field"] = field
    return {"error": error, "detail": message}


def tei_status(status: int, error_type: str | None = None) -> tuple[int, str]:
    """TEI's status and ``error_type`` for a rerankd failure (TEI: Validation and Tokenizer 422, Empty 400,
    Overloaded 429 (a gateway's rate limit too), Unhealthy 503, Backend 424). A too-large request (413: more texts than
    ``--max-documents``, a text too long with ``truncate: false``) and a query that cannot fit (400) are
    TEI's validation errors, 422; a body that is not JSON stays 400, as TEI's own JSON parser answers."""
    if error_type == "overloaded" or status == 429:  # a full queue, or a gateway's rate limit
        return 429, "Overloaded"
    if status == 503:
        return 503, "Unhealthy"
    if error_type == "empty":
        return 400, "Empty"
    if status == 413 or status == 422 or error_type == "query_too_long":
        return 422, "Validation"
    if status >= 500:
        return status, "Backend"
    return status, "Validation"


def tei_error_body(status: int, message: str, *, error_type: str | None = None) -> tuple[int, dict[str, Any]]:
    """TEI's status and body, ``{"error": message, "error_type": …}`` (``protocol.TEIErrorBody``)."""
    tei_code, tei_type = tei_status(status, error_type)
    return tei_code, {"error": message, "error_type": tei_type}


def set_error_dialect(scope: MutableMapping[str, Any], dialect: ErrorDialect) -> None:
    """Answer this request's errors in ``dialect`` from now on (a route that has recognised a TEI body)."""
    scope.setdefault("state", {})[_DIALECT_KEY] = dialect


def error_dialect(scope: Mapping[str, Any]) -> ErrorDialect:
    """The dialect this request's errors are answered in: ``rerankd`` unless a route said otherwise."""
    dialect: ErrorDialect = (scope.get("state") or {}).get(_DIALECT_KEY, "rerankd")
    return dialect


def error_headers(status: int, *, retry_after: float | None = None, headers: Mapping[str, str] | None = None,
                  ) -> dict[str, str]:
    """The headers an error carries: ``WWW-Authenticate`` on a 401 (RFC 9110 requires one), ``Retry-After``
    in whole seconds (at least 1) when the caller knows when to come back, and the caller's own."""
    all_headers = dict(headers or {})
    if status == 401:
        all_headers.setdefault("WWW-Authenticate", "Bearer")
    if retry_after is not None and "Retry-After" not in all_headers:
        all_headers["Retry-After"] = str(max(1, round(retry_after)))
    return all_headers


def error_response(
    status: int, message: str, *, error_type: str | None = None, field: str | None = None,
    retry_after: float | None = None, headers: Mapping[str, str] | None = None, dialect: ErrorDialect = "rerankd",
) -> JSONResponse:
    """Every error answer of every app. A Response is an ASGI app too: middleware that answers before (or
    instead of) the app sends it with ``await error_response(...)(scope, receive, send)``, so the
    exception handlers and the raw-ASGI path write the same bytes. ``dialect="tei"``: TEI's body and status."""
    if dialect == "tei":
        tei_code, body = tei_error_body(status, message, error_type=error_type)
        return JSONResponse(body, status_code=tei_code,
                            headers=error_headers(tei_code, retry_after=retry_after, headers=headers))
    return JSONResponse(error_body(status, message, error_type=error_type, field=field), status_code=status,
                        headers=error_headers(status, retry_after=retry_after, headers=headers))


def _describe(errors: list[dict[str, Any]]) -> tuple[str, str | None, bool]:
    """A one-line message naming the fields to fix; whether the body was not JSON."""
    parts: list[str] = []
    first_field: str | None = None
    not_json = False
    for err in errors[:5]:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        if err.get("type") == "json_invalid":
            not_json = True
            parts.append(f"body is not valid JSON ({err.get('ctx', {}).get('error', 'parse error')})")
            continue
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):  # a model validator that names its field: its own words
            first_field = first_field or cause.field
            parts.append(str(cause))
            continue
        # Union branches prefix the location with the model name; drop it for readability.
        loc = [p for p in loc if not p[:1].isupper()] or loc
        name = ".".join(loc) or "body"
        first_field = first_field or name
        parts.append(f"`{name}`: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request", first_field, not_json


def install_error_handlers(app: FastAPI) -> None:
    """Map every failure of ``app`` to :func:`error_response` (a 499 without body for a client gone)."""
    @app.exception_handler(RerankdError)
    async def _rerankd_error(request: Request, exc: RerankdError) -> JSONResponse:
        return error_response(exc.status_code, exc.message, error_type=exc.error_type,
                              field=exc.field, retry_after=exc.retry_after, headers=getattr(exc, "headers", None),
                              dialect=error_dialect(request.scope))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        message, field, not_json = _describe(errors)
        dialect = error_dialect(request.scope)
        if not_json:
            return error_response(400, message + "; send a JSON object with Content-Type: application/json",
                                  dialect=dialect)
        # An empty list is TEI's "Empty" error (400); everything else is a validation error.
        empty = bool(errors) and errors[0].get("type") == "too_short" and errors[0].get("input") == []
        return error_response(422, message, field=field, error_type="empty" if empty and dialect == "tei" else None,
                              dialect=dialect)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = str(exc.detail)
        path = request.url.path
        if exc.status_code == 404 and message == "Not Found" and len(path) > 1 and path.endswith("/"):
            # The apps never redirect to the slashless route (a redirect is built from the client's Host).
            message = f"Not Found: no route {path}; routes have no trailing slash, try {path.rstrip('/')}"
        if exc.status_code == 400 and message == "There was an error parsing the body":
            # FastAPI's words for undecodable bytes or JSON nested past the parser's recursion limit.
            message = "the body could not be parsed: send a JSON object in UTF-8, nested at most a few hundred levels"
        return error_response(exc.status_code, message, headers=getattr(exc, "headers", None),
                              dialect=error_dialect(request.scope))

    @app.exception_handler(ClientDisconnectedError)
    async def _client_gone(_: Request, __: ClientDisconnectedError) -> Response:
        # Nobody reads this response; its status is what the access log line and the metrics record.
        return Response(status_code=CLIENT_CLOSED_STATUS)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal error; the request id identifies it in the server log",
                              error_type="internal_error", dialect=error_dialect(request.scope))
