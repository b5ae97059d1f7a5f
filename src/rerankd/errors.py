"""One error type per failure kind, each carrying its HTTP status.

Why: the engine and the gateway raise what went wrong in their own words; the HTTP layers map these
to responses in exactly one function (``rerankd.http.errors.install_error_handlers``), so a status
code never depends on which handler happened to catch the exception.
"""

from __future__ import annotations

__all__ = [
    "BadRequestError",
    "ConflictError",
    "ForbiddenError",
    "KeyNotFoundError",
    "ModelNotFoundError",
    "NotReadyError",
    "OverloadedError",
    "PayloadTooLargeError",
    "QueryTooLongError",
    "RateLimitedError",
    "RerankdError",
    "TaskMismatchError",
    "UnauthorizedError",
    "UnprocessableError",
    "UpstreamMalformedError",
    "UpstreamUnavailableError",
]


class RerankdError(Exception):
    """Base of every error that becomes an HTTP answer. ``message`` says what the client should fix."""

    status_code: int = 500
    error_type: str = "internal_error"

    def __init__(self, message: str, *, retry_after: float | None = None, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.field = field


class BadRequestError(RerankdError):
    status_code = 400
    error_type = "bad_request"


class QueryTooLongError(BadRequestError):
    """Instruction + query alone do not fit the model length, even with an empty document."""

    error_type = "query_too_long"


class TaskMismatchError(BadRequestError):
    """The route is the other task's: an embedding route on a reranker's server, or the reverse."""

    error_type = "wrong_task"


class UnauthorizedError(RerankdError):
    status_code = 401
    error_type = "unauthorized"


class ForbiddenError(RerankdError):
    """Authenticated, but this credential may not do that (a user key on an admin route)."""

    status_code = 403
    error_type = "forbidden"


class RateLimitedError(RerankdError):
    """A per-key budget is spent; ``headers`` carry ``X-RateLimit-*`` and ``Retry-After``."""

    status_code = 429
    error_type = "rate_limited"

    def __init__(self, message: str, *, headers: dict[str, str], retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.headers = headers


class UpstreamUnavailableError(RerankdError):
    """The gateway found no replica that could answer (all down, ejected or failing)."""

    status_code = 503
    error_type = "upstream_unavailable"


class UpstreamMalformedError(RerankdError):
    """A replica answered 200 with something the gateway cannot account for (an implausible token count,
    a body that is not JSON, a split part without results): a bad gateway, and nothing is charged."""

    status_code = 502
    error_type = "upstream_malformed"


class ConflictError(RerankdError):
    """The request clashes with existing state (a key name already taken)."""

    status_code = 409
    error_type = "conflict"


class ModelNotFoundError(RerankdError):
    status_code = 404
    error_type = "model_not_found"


class KeyNotFoundError(RerankdError):
    """No API key has this name or id (``/admin/keys/{name_or_id}``); not a model, so not ``model_not_found``."""

    status_code = 404
    error_type = "key_not_found"


class PayloadTooLargeError(RerankdError):
    status_code = 413
    error_type = "payload_too_large"


class UnprocessableError(RerankdError):
    status_code = 422
    error_type = "invalid_request"


class OverloadedError(RerankdError):
    """The queue is full: come back later (503 with Retry-After)."""

    status_code = 503
    error_type = "overloaded"


class NotReadyError(RerankdError):
    """The model is not loaded yet, or the server is draining."""

    status_code = 503
    error_type = "not_ready"
