"""The one error body: its shape, its headers, and the handlers that map every failure onto it."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi import FastAPI, Request
from pydantic import BaseModel, model_validator

from rerankd.errors import PayloadTooLargeError, RateLimitedError, UnprocessableError
from rerankd.http import ClientDisconnectedError, error_body, error_headers, error_response, install_error_handlers
from rerankd.http.errors import set_error_dialect, tei_status
from rerankd.protocol import ErrorBody, FieldError, TEIErrorBody


def test_the_body_has_the_documented_shape_and_a_field_only_when_named() -> None:
    assert error_body(413, "too big") == {"error": {"message": "too big", "type": "payload_too_large", "code": 413},
                                          "detail": "too big"}
    named = error_body(422, "`top_n`: bad", field="top_n")
    assert named == {"error": {"message": "`top_n`: bad", "type": "invalid_request", "code": 422, "field": "top_n"},
                     "detail": "`top_n`: bad"}
    assert ErrorBody.model_validate(named).error.field == "top_n"


@pytest.mark.parametrize(("status", "error_type", "tei"), [
    (503, "overloaded", (429, "Overloaded")), (503, "not_ready", (503, "Unhealthy")),
    (422, "empty", (400, "Empty")), (422, "invalid_request", (422, "Validation")),
    (413, "payload_too_large", (422, "Validation")), (400, "query_too_long", (422, "Validation")),
    (400, "bad_request", (400, "Validation")), (500, "internal_error", (500, "Backend")),
])
def test_tei_requests_get_tei_status_codes_and_types(status: int, error_type: str, tei: tuple[int, str]) -> None:
    assert tei_status(status, error_type) == tei
    response = error_response(status, "why", error_type=error_type, dialect="tei", retry_after=1)
    assert response.status_code == tei[0] and response.headers["retry-after"] == "1"
    assert TEIErrorBody.model_validate_json(bytes(response.body)) == TEIErrorBody(error="why", error_type=tei[1])


@pytest.mark.parametrize(("status", "error_type"), [
    (400, "bad_request"), (401, "unauthorized"), (404, "not_found"), (408, "request_timeout"),
    (413, "payload_too_large"), (429, "rate_limited"), (503, "unavailable"), (418, "error"),
])
def test_each_status_has_its_type_unless_the_caller_names_one(status: int, error_type: str) -> None:
    assert error_body(status, "m")["error"]["type"] == error_type
    assert error_body(status, "m", error_type="own")["error"]["type"] == "own"


def test_401_carries_www_authenticate_and_retry_after_is_whole_seconds_at_least_one() -> None:
    assert error_headers(401) == {"WWW-Authenticate": "Bearer"}
    assert error_headers(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}) == {
        "WWW-Authenticate": 'Bearer error="invalid_token"'}
    assert error_headers(503, retry_after=0.2) == {"Retry-After": "1"}
    assert error_headers(429, retry_after=7.6) == {"Retry-After": "8"}
    assert error_headers(429, retry_after=3, headers={"Retry-After": "60"}) == {"Retry-After": "60"}
    assert error_headers(400) == {}


def test_the_response_is_the_body_and_the_headers() -> None:
    response = error_response(429, "slow down", retry_after=2, headers={"X-RateLimit-Limit": "10"})
    assert response.status_code == 429 and response.headers["content-type"] == "application/json"
    assert response.headers["retry-after"] == "2" and response.headers["x-ratelimit-limit"] == "10"
    assert json.loads(bytes(response.body)) == error_body(429, "slow down")


class Body(BaseModel):
    top_n: int


class Named(BaseModel):
    names: list[object]

    @model_validator(mode="after")
    def _strings(self) -> Named:
        for i, name in enumerate(self.names):
            if not isinstance(name, str):
                raise FieldError(f"`names[{i}]` is not a string", f"names[{i}]")
        return self


async def test_the_handlers_answer_every_failure_with_error_response() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/typed")
    async def typed() -> None:
        raise RateLimitedError("over the limit of 10 per minute", retry_after=30, headers={"X-RateLimit-Limit": "10"})

    @app.post("/unprocessable")
    async def unprocessable() -> None:
        raise UnprocessableError("`documents[0]`: empty", field="documents[0]")

    @app.post("/validated")
    async def validated(body: Body) -> int:
        return body.top_n

    @app.get("/bug")
    async def bug() -> None:
        raise RuntimeError("secret detail")

    @app.get("/gone")
    async def gone() -> None:
        raise ClientDisconnectedError("client disconnected")

    @app.post("/named")
    async def named(body: Named) -> int:
        return len(body.names)

    @app.post("/tei-early")
    async def tei_early(request: Request) -> int:
        set_error_dialect(request.scope, "tei")
        raise PayloadTooLargeError("`texts` has too many items", field="texts")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        limited = await client.post("/typed")
        assert limited.content == error_response(429, "over the limit of 10 per minute").body
        assert limited.headers["retry-after"] == "30" and limited.headers["x-ratelimit-limit"] == "10"
        unfit = await client.post("/unprocessable")
        assert unfit.json()["error"]["field"] == "documents[0]"
        invalid = await client.post("/validated", json={"top_n": "three"})
        assert invalid.status_code == 422 and invalid.json()["error"]["field"] == "top_n"
        not_json = await client.post("/validated", content=b"{nope", headers={"content-type": "application/json"})
        assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]["message"]
        wrong_method = await client.get("/typed")
        assert wrong_method.content == error_response(405, "Method Not Allowed").body
        broken = await client.get("/bug")
        assert broken.status_code == 500 and "secret" not in broken.text
        assert broken.json()["error"]["type"] == "internal_error"
        left = await client.get("/gone")
        assert left.status_code == 499 and left.content == b""
        field_named = await client.post("/named", json={"names": ["a", 1]})
        assert field_named.status_code == 422 and field_named.json()["error"]["field"] == "names[1]"
        assert field_named.json()["detail"] == "`names[1]` is not a string"  # the validator's words, no prefix
        early = await client.post("/tei-early")
        assert (early.status_code, early.json()) == (422, {"error": "`texts` has too many items",
                                                           "error_type": "Validation"})
