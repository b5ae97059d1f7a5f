"""Admission before work: a scoring request's size is judged on its raw body, before pydantic sees it.

Why: validating a body is not free. 200k empty ``{}`` documents (0.6 MB, far under the body cap) made
FastAPI's parser and pydantic build 200k objects and 200k errors on the event loop — 4.4 s during which
``/health`` and every other client stalled — only to answer 422. Here the body is parsed by a JSON
parser that counts what it builds and stops at a budget (no more than ``--max-documents`` items in a
top-level list, a bounded total of JSON values, a bounded nesting depth), and the characters to
tokenize are summed against ``--max-request-chars``. Only a body inside every bound reaches pydantic,
whose validation of at most ``--max-documents`` documents is cheap.

Why a route class and not a middleware: the handlers keep their pydantic models in their signatures, so
the OpenAPI schema (which the fuzz tests read) and FastAPI's own 422 messages stay exactly as they were;
the route hands FastAPI the JSON it already parsed (:class:`AdmittedRequest`), so a body is read and
parsed once, never twice.

Why here, beside :mod:`rerankd.protocol`: the field names are the scoring dialects', and both rooms admit
with it — the server (:mod:`rerankd.server.admission`, which adds the idle-memory tracking) and the gateway
(:mod:`rerankd.gateway.admission`, which authenticates first and charges a refusal to the key).
"""

from __future__ import annotations

import asyncio
import json
import json.decoder
import json.scanner
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from starlette.requests import ClientDisconnect

from rerankd.edge_settings import DEFAULT_MAX_REQUEST_CHARS
from rerankd.errors import BadRequestError, PayloadTooLargeError
from rerankd.http.disconnect import ClientDisconnectedError

__all__ = ["DEFAULT_MAX_REQUEST_CHARS", "AdmissionLimits", "AdmittedRequest", "admit", "check_texts", "parse_bounded"]

# Fields whose lists are the documents (or queries) of a request: each is capped at --max-documents. `input`
# (OpenAI) and `inputs` (TEI) are the texts of an embedding request; a list of numbers there is one input's
# token ids, not a list of inputs, and is not capped by --max-documents.
LIST_FIELDS = ("documents", "texts", "text_2", "text_1", "queries", "input", "inputs")
# Fields whose characters are tokenized (a document object's `text` is read inside the list fields).
TEXT_FIELDS = ("query", "instruction", *LIST_FIELDS)
# A body this small parses in well under a millisecond: not worth a trip to a worker thread.
INLINE_PARSE_BYTES = 64 * 1024
_NUMBER_STARTS = frozenset("-0123456789")
_KEY_BEFORE = re.compile(r'"((?:[^"\\]|\\.){1,64})"\s*:\s*$')


@dataclass(frozen=True)
class AdmissionLimits:
    """The bounds a scoring request's body must stay inside, from the server's or the gateway's settings."""

    max_documents: int
    max_request_chars: int
    max_depth: int = 32
    """Nesting levels of the body: a rerank body has 3 (object, list, document object) plus metadata."""
    extra_values: int = 0
    """JSON values allowed beyond the documents' share: the embedding routes' token-id inputs."""

    @property
    def max_values(self) -> int:
        """JSON values in the whole body: every allowed document as an object with a dozen metadata values."""
        return 16 * self.max_documents + 1024 + self.extra_values


class _Budget:
    """Counts the values one parse builds; refuses past the limits."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self.values = 0
        self.depth = 0

    def count(self, scan_once: Callable[[str, int], tuple[Any, int]],
              on_item: Callable[[str, int], None] | None = None) -> Callable[[str, int], tuple[Any, int]]:
        def counted(string: str, idx: int) -> tuple[Any, int]:
            self.values += 1
            if self.values > self.limits.max_values:
                raise PayloadTooLargeError(
                    f"the body holds more than {self.limits.max_values} JSON values (16 per allowed document, "
                    "--max-documents); send fewer documents or less metadata per document")
            if on_item is not None:
                on_item(string, idx)
            return scan_once(string, idx)
        return counted

    def enter(self) -> None:
        self.depth += 1
        if self.depth > self.limits.max_depth:
            raise BadRequestError(f"the body is nested more than {self.limits.max_depth} levels deep")


def parse_bounded(body: bytes, limits: AdmissionLimits) -> Any:
    """``json.loads(body)``, stopped as soon as the body exceeds ``limits`` (413, or 400 for nesting).

    A list directly under the top-level object with more than ``max_documents`` items is refused naming
    its field, after reading ``max_documents + 1`` items, not all of them. Raises
    :class:`json.JSONDecodeError` for a body that is not JSON, as ``json.loads`` does.
    """
    text = body.decode(json.detect_encoding(body), "surrogatepass")
    budget = _Budget(limits)

    def parse_array(s_and_end: tuple[str, int], scan_once: Callable[[str, int], tuple[Any, int]]) -> Any:
        string, start = s_and_end
        budget.enter()
        items = 0

        def item(text: str, idx: int) -> None:
            nonlocal items
            if text[idx : idx + 1] in _NUMBER_STARTS:
                return  # a token id: the list is one input's tokens, bounded by the value budget
            items += 1
            if budget.depth == 2 and items > limits.max_documents:
                key = _KEY_BEFORE.search(string, max(0, start - 80), start - 1)
                field = key.group(1) if key else "documents"
                raise PayloadTooLargeError(
                    f"`{field}` has more items than the limit of {limits.max_documents} (--max-documents); "
                    "split the request", field=field)

        try:
            return json.decoder.JSONArray(s_and_end, budget.count(scan_once, item))  # type: ignore[attr-defined]
        finally:
            budget.depth -= 1

    def parse_object(s_and_end: tuple[str, int], strict: bool, scan_once: Callable[[str, int], tuple[Any, int]],
                     object_hook: Any, object_pairs_hook: Any, memo: Any = None) -> Any:
        budget.enter()
        try:
            return json.decoder.JSONObject(  # type: ignore[attr-defined]
                s_and_end, strict, budget.count(scan_once), object_hook, object_pairs_hook, memo)
        finally:
            budget.depth -= 1

    decoder = json.JSONDecoder()
    # Typeshed omits the decoder's hooks and the pure-Python scanner (the C scanner would not call the hooks).
    decoder.parse_array = parse_array  # type: ignore[attr-defined]
    decoder.parse_object = parse_object  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder.decode(text)


def check_texts(payload: Any, limits: AdmissionLimits) -> None:
    """Refuse (413, naming the biggest field) a body whose texts to tokenize exceed ``max_request_chars``.

    Reads only the fields a scoring request tokenizes, with no validation: anything of the wrong shape
    counts 0 here and is named by pydantic afterwards.
    """
    if not isinstance(payload, dict):
        return
    sizes = {name: _chars(payload.get(name)) for name in TEXT_FIELDS}
    total = sum(sizes.values())
    if total > limits.max_request_chars:
        field = max(sizes, key=lambda name: sizes[name])
        raise PayloadTooLargeError(
            f"the request holds {total} characters to score, more than the limit of {limits.max_request_chars} "
            "(--max-request-chars); send fewer or shorter documents", field=field)


def _chars(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_chars(v.get("text")) if isinstance(v, dict) else _chars(v) if isinstance(v, str) else 0
                   for v in value)
    return 0


class AdmittedRequest(Request):
    """A request whose body was parsed (and admitted) already: FastAPI's ``await request.json()`` gets it."""

    admitted_json: Any

    async def json(self) -> Any:
        return self.admitted_json


async def admit(request: Request, limits: AdmissionLimits) -> AdmittedRequest:
    """Read, parse and size-check the body of ``request``; the same request, carrying its parsed JSON."""
    try:
        body = await request.body()
    except ClientDisconnect:  # gone mid-body (a dripping client that gave up): a 499, not an "unhandled error"
        raise ClientDisconnectedError("the client disconnected while sending the body") from None
    admitted = AdmittedRequest(request.scope, request.receive)
    admitted._body = body  # Starlette's cache of the body: FastAPI reads it from here, not the socket
    if not body:
        admitted.admitted_json = None  # never read: FastAPI answers "field required" for an empty body
        return admitted
    try:
        if len(body) <= INLINE_PARSE_BYTES:
            payload = parse_bounded(body, limits)
        else:  # pure-Python parsing yields the GIL every few ms: the event loop keeps running
            payload = await asyncio.to_thread(parse_bounded, body, limits)
    except json.JSONDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error",
                                       "input": {}, "ctx": {"error": exc.msg}}]) from None
    except (UnicodeDecodeError, RecursionError):
        raise BadRequestError("the body could not be parsed: send a JSON object in UTF-8") from None
    check_texts(payload, limits)
    admitted.admitted_json = payload
    return admitted
