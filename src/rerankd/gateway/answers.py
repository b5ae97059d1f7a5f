"""Judging what a replica answered before a client sees it: the shape of a 200, the words of an error.

Why the gateway checks at all: a replica is another process (ours, a plain vLLM, or whatever sits in
between: an ingress, a sidecar, a misrouted port). A 200 that is an HTML login page, or JSON of the wrong
shape, would reach the client as a "success" it cannot parse, and be billed. So a 200 is accepted only in
the shape its route promises (:func:`accept_answer`), else a 502 naming what was wrong.

Why error bodies are rebuilt rather than passed on: a 4xx/5xx body from upstream may be a stack trace or a
framework's debug page carrying a database URL or a secret. Only rerankd's error shape (and vLLM's, which
the gateway also fronts) is understood; its fields are re-serialised through the one error writer, the
message cut to :data:`MAX_ERROR_MESSAGE_CHARS`. Anything else becomes a generic message with the status;
the raw body goes to the gateway log (cut short, with the request id), never to the client.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

from rerankd.errors import UpstreamMalformedError
from rerankd.gateway.tokens import TOKENS_HEADER, parse_answer, parse_token_header, shown, usage_count, usage_tokens
from rerankd.http.errors import error_body

__all__ = ["COHERE_SHAPES", "EMBED_SHAPES", "MAX_ERROR_MESSAGE_CHARS", "AnswerShape", "accept_answer", "check_answer",
           "cohere_tokens", "safe_error_body"]

log = logging.getLogger(__name__)

MAX_ERROR_MESSAGE_CHARS = 1024  # a rerankd message names a field and a limit; anything longer is noise
_LOGGED_BODY_CHARS = 2048  # enough of a stack trace to see where it came from
_SAFE_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")  # an error type is an identifier, not prose
_SAFE_FIELD = re.compile(r"^[A-Za-z0-9_.\[\]-]{1,128}$")


class AnswerShape(enum.Enum):
    """What a route's 200 must look like (DESIGN.md's HTTP contract)."""

    RERANK = "rerank"  # {"results": [{"index", "relevance_score", ...}], ...}
    TEI = "tei"  # [{"index", "score", ...}]
    SCORE = "score"  # {"data": [{"index", "score", ...}], ...}
    MODELS = "models"  # {"data": [...]} (OpenAI model list)
    OPENAI_EMBED = "openai_embed"  # {"data": [{"index", "embedding"}], "usage"} (POST /v1/embeddings)
    TEI_EMBED = "tei_embed"  # [[float, ...], ...] (POST /embed; tokens in X-Prompt-Tokens)
    COHERE_EMBED = "cohere_embed"  # {"embeddings": {kind: [...]}, "meta": {"billed_units"}} (POST /v2/embed)
    # POST /v1/embed: v2's, or {"embeddings": [[float, ...], ...]} ("embeddings_floats": no embedding_types asked)
    COHERE_V1_EMBED = "cohere_v1_embed"


EMBED_SHAPES = frozenset({AnswerShape.OPENAI_EMBED, AnswerShape.TEI_EMBED, AnswerShape.COHERE_EMBED,
                          AnswerShape.COHERE_V1_EMBED})
COHERE_SHAPES = frozenset({AnswerShape.COHERE_EMBED, AnswerShape.COHERE_V1_EMBED})  # tokens in meta.billed_units


# shape -> (the list's key in the body, None for a bare list; the score's field name)
_LISTS: dict[AnswerShape, tuple[str | None, str]] = {
    AnswerShape.RERANK: ("results", "relevance_score"),
    AnswerShape.TEI: (None, "score"),
    AnswerShape.SCORE: ("data", "score"),
}


def accept_answer(shape: AnswerShape, headers: Mapping[str, str], body: bytes, documents: int) -> int:
    """Check a 200's shape for ``documents`` inputs and return the tokens it reports; 502 otherwise."""
    answer = parse_answer(body)
    check_answer(shape, answer, documents)
    header = headers.get(TOKENS_HEADER)
    if header is not None:
        return parse_token_header(header)
    if shape in COHERE_SHAPES:
        return cohere_tokens(answer)
    return usage_tokens(answer)


def cohere_tokens(answer: Mapping[str, Any]) -> int:
    """Cohere's count: ``meta.billed_units.input_tokens`` (0 when absent), read as defensively as ``usage``."""
    meta = answer.get("meta")
    billed = meta.get("billed_units") if isinstance(meta, Mapping) else None
    if billed is None:
        return 0
    if not isinstance(billed, Mapping):
        raise _malformed("`meta.billed_units` must be an object")
    return usage_count({"input_tokens": billed.get("input_tokens")}, "input_tokens")


def check_answer(shape: AnswerShape, answer: Any, documents: int) -> None:
    """Raise :class:`UpstreamMalformedError` naming the first thing about ``answer`` that breaks ``shape``."""
    if shape is AnswerShape.MODELS:
        if not isinstance(answer, Mapping) or not isinstance(answer.get("data"), list):
            raise _malformed("a model list needs a `data` list")
        return
    if shape in EMBED_SHAPES:
        _check_embeddings(shape, answer, documents)
        return
    key, score = _LISTS[shape]
    if key is None:
        items = answer
        where = "the answer"
        if not isinstance(items, list):
            raise _malformed(f"{where} must be a JSON list of {{index, {score}}}, got {_kind(items)}")
    else:
        if not isinstance(answer, Mapping):
            raise _malformed(f"the answer must be a JSON object with `{key}`, got {_kind(answer)}")
        items = answer.get(key)
        where = f"`{key}`"
        if not isinstance(items, list):
            raise _malformed(f"{where} must be a list of {{index, {score}}}, got {_kind(items)}")
    if len(items) > documents:
        raise _malformed(f"{where} has {len(items)} items for {documents} inputs")
    for position, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise _malformed(f"{where}[{position}] must be an object, got {_kind(item)}")
        index = item.get("index")
        if type(index) is not int or not 0 <= index < documents:  # bool is an int; a float is no index
            raise _malformed(f"{where}[{position}].index must be an integer from 0 to {documents - 1}, "
                             f"got {shown(repr(index))}")
        value = item.get(score)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise _malformed(f"{where}[{position}].{score} must be a finite number, got {shown(repr(value))}")


def _check_embeddings(shape: AnswerShape, answer: Any, inputs: int) -> None:
    """An embedding answer holds exactly one vector per input (an embedding route answers every input)."""
    if shape is AnswerShape.TEI_EMBED:
        _vectors(answer, "the answer", inputs)
        return
    if not isinstance(answer, Mapping):
        raise _malformed(f"the answer must be a JSON object, got {_kind(answer)}")
    if shape is AnswerShape.OPENAI_EMBED:
        items = answer.get("data")
        if not isinstance(items, list) or len(items) != inputs:
            raise _malformed(f"`data` must be a list of {inputs} embeddings, got {_kind(items)}"
                             f"{f' of {len(items)}' if isinstance(items, list) else ''}")
        for position, item in enumerate(items):
            if not isinstance(item, Mapping) or type(item.get("index")) is not int \
                    or not 0 <= item["index"] < inputs:
                raise _malformed(f"`data`[{position}] must be an object with an index from 0 to {inputs - 1}")
            if not isinstance(item.get("embedding"), list | str):
                raise _malformed(f"`data`[{position}].embedding must be a list of numbers or a base64 string")
        return
    by_type = answer.get("embeddings")
    if shape is AnswerShape.COHERE_V1_EMBED and isinstance(by_type, list):  # embeddings_floats
        _vectors(by_type, "`embeddings`", inputs)
        return
    if not isinstance(by_type, Mapping) or not by_type:
        raise _malformed(f"`embeddings` must be an object of vector lists by type, got {_kind(by_type)}")
    for kind, vectors in by_type.items():
        _vectors(vectors, f"`embeddings.{kind}`", inputs)


def _vectors(value: Any, where: str, inputs: int) -> None:
    if not isinstance(value, list) or len(value) != inputs:
        got = f"{len(value)} items" if isinstance(value, list) else _kind(value)
        raise _malformed(f"{where} must be a list of {inputs} vectors, got {got}")
    for position, vector in enumerate(value):
        if not isinstance(vector, list | str):  # Cohere's base64 kind is a string per input
            raise _malformed(f"{where}[{position}] must be a vector, got {_kind(vector)}")


def safe_error_body(status: int, body: bytes, *, request_id: str, upstream: str) -> bytes:
    """The error body a client may see for a replica's ``status`` answer: its own fields when it is
    rerankd's or vLLM's error shape, else a generic message (the raw body is logged, not sent)."""
    fields = _error_fields(body)
    if fields is not None:
        message, error_type, field = fields
        return json.dumps(error_body(status, message, error_type=error_type, field=field),
                          ensure_ascii=False, separators=(",", ":")).encode()
    text = body[:_LOGGED_BODY_CHARS].decode("utf-8", "replace")
    log.warning("replica %s answered %d with a body that is not an error object (%d bytes): %s", upstream, status,
                len(body), text, extra={"request_id": request_id})
    message = f"the replica answered {status}; see the gateway log (request id {request_id})"
    return json.dumps(error_body(status, message, error_type="upstream_error"), separators=(",", ":")).encode()


def _error_fields(body: bytes) -> tuple[str, str | None, str | None] | None:
    """(message, type, field) of ``{"error": {...}}`` (rerankd, newer vLLM), ``{"object": "error", ...}``
    (older vLLM) or ``{"error": "…", "error_type": "…"}`` (TEI's shape, a replica's answer to a TEI body);
    None for anything else."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    error = parsed.get("error")
    if isinstance(error, str) and isinstance(parsed.get("error_type"), str):
        error = {"message": error, "type": parsed["error_type"]}
    if not isinstance(error, dict):
        error = parsed if parsed.get("object") == "error" else None
    if error is None or not isinstance(error.get("message"), str):
        return None
    message: str = error["message"]
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        message = message[:MAX_ERROR_MESSAGE_CHARS] + "... (cut)"
    error_type = error.get("type")
    field = error.get("field", error.get("param"))
    return (message, error_type if isinstance(error_type, str) and _SAFE_TYPE.match(error_type) else None,
            field if isinstance(field, str) and _SAFE_FIELD.match(field) else None)


def _malformed(what: str) -> UpstreamMalformedError:
    return UpstreamMalformedError(f"the replica answered 200 in the wrong shape: {what}")


def _kind(value: Any) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", type(None): "null"}
    return kinds.get(type(value), type(value).__name__)
