"""The token count a replica reports for an answer, read defensively because it is charged.

Why defensive: the count decides what a key is billed and how much of its tokens/min it spends, and it
comes from another process (ours, a plain vLLM, or whatever sits in between). A count is accepted only
as a non-negative integer below 2**31 (the ledger's ``tokens`` column is a 32-bit integer): a header of
thousands of digits, ``-5``, ``1e9``, ``true`` or ``"12"`` in the JSON are not counts. A 200 carrying
such a value is a malformed answer: :class:`~rerankd.errors.UpstreamMalformedError` (502, not charged),
rather than a guess that would bill the wrong amount or a crash that would answer 500.

Where the count is: the ``x-prompt-tokens`` header (TEI-shaped answers, which are JSON lists) or
``usage.prompt_tokens`` in the body; a plain vLLM upstream reports only ``usage.total_tokens`` (equal to
the prompt tokens for scoring). An answer that reports no count at all is charged 0, as before.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rerankd.errors import UpstreamMalformedError

__all__ = ["MAX_TOKENS", "TOKENS_HEADER", "parse_answer", "parse_token_header", "reported_tokens", "shown",
           "usage_count", "usage_tokens"]

MAX_TOKENS = 2**31  # exclusive: the largest count the ledger's 32-bit column holds is MAX_TOKENS - 1
TOKENS_HEADER = "x-prompt-tokens"
_MAX_DIGITS = len(str(MAX_TOKENS - 1))  # checked before int(), so a huge header costs nothing to refuse


def parse_token_header(value: str) -> int:
    """The count in an ``x-prompt-tokens`` header: plain ASCII digits below :data:`MAX_TOKENS`."""
    text = value.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > _MAX_DIGITS or int(text) >= MAX_TOKENS:
        raise UpstreamMalformedError(
            f"the replica reported an implausible token count in {TOKENS_HEADER} ({shown(text)}); "
            "expected an integer from 0 to 2147483647")
    return int(text)


def usage_tokens(answer: Any) -> int:
    """The count in a JSON answer's ``usage``: ``prompt_tokens``, else ``total_tokens``, else 0."""
    if not isinstance(answer, Mapping):
        return 0  # a TEI list, or a shape without usage: nothing reported, nothing charged
    usage = answer.get("usage")
    prompt = usage_count(usage, "prompt_tokens")
    return prompt if prompt else usage_count(usage, "total_tokens")


def reported_tokens(headers: Mapping[str, str], body: bytes) -> int:
    """The tokens a 200 answer reports: the header when present, else the body's ``usage``."""
    header = headers.get(TOKENS_HEADER)
    if header is not None:
        return parse_token_header(header)
    return usage_tokens(parse_answer(body))


def parse_answer(body: bytes) -> Any:
    """A 200's JSON; a body that is not JSON (an HTML error page from a proxy) is a 502."""
    try:
        return json.loads(body)
    except ValueError:
        raise UpstreamMalformedError("the replica answered 200 with a body that is not JSON") from None


def usage_count(usage: Any, name: str) -> int:
    """One count in a ``usage`` object (``prompt_tokens``, ``total_tokens``); 0 when absent."""
    if usage is None:
        return 0
    if not isinstance(usage, Mapping):
        raise UpstreamMalformedError(f"the replica's `usage` is not an object ({shown(repr(usage))})")
    value = usage.get(name)
    if value is None:
        return 0
    # bool is an int subclass; a float (even 12.0) is not a count of tokens.
    if type(value) is not int or not 0 <= value < MAX_TOKENS:
        raise UpstreamMalformedError(
            f"the replica reported an implausible `usage.{name}` ({shown(repr(value))}); "
            "expected an integer from 0 to 2147483647")
    return value


def shown(text: str) -> str:
    """The offending value for the message, cut short: it may be thousands of characters long."""
    return text if len(text) <= 24 else f"{text[:20]}... ({len(text)} characters)"
