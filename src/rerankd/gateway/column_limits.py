"""Fitting values to a table's columns before they are stored, so no value can make the database refuse a row.

Why: one value the database refuses (a string past ``VARCHAR(n)``, an integer past ``INTEGER``'s range, NaN in a
``NOT NULL`` float on SQLite, a NUL byte or a lone surrogate in text on PostgreSQL) fails the whole multi-row
``INSERT`` it is in. SQLite enforces no lengths, so a suite on SQLite alone never sees the first two.

One source for the limits: the SQLAlchemy column definitions. Lengths come from ``String(n)``, integer ranges from
the type (``SmallInteger``/``Integer``/``BigInteger`` as PostgreSQL sizes them; SQLite's INTEGER is wider, so
the narrower range holds on both), nullability from ``nullable``. What a type cannot say (tokens are never
negative, an HTTP status is 100-599) a column states in its ``info``: ``{"minimum": 0}``, ``{"maximum": 599}``.

Values are bounded, never refused: a ledger row is a fact that happened (a client was answered), so a clamped
count, a truncated model name or a 0.0 latency is kept rather than dropped, and each change is reported to the
caller (to log), described without printing the offending value in full.
"""

from __future__ import annotations

import hashlib
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Float, Integer, Numeric, SmallInteger, String
from sqlalchemy.sql.expression import FromClause

__all__ = ["ColumnLimits", "FittedRow", "integer_range"]

_INT_RANGES = ((SmallInteger, 2**15), (BigInteger, 2**63), (Integer, 2**31))  # subclasses before Integer
_UNIQUE_SUFFIX_HEX = 16  # 64 bits of SHA-256: a truncated unique value stays unique (collisions ~2^-32 at 2^16 rows)
_REPLACEMENT = "\ufffd"  # stands in for a NUL (PostgreSQL text refuses 0x00) and for unencodable characters

_SURROGATES = re.compile("[\ud800-\udfff]")  # code points UTF-8 cannot encode on their own

_Fit = Callable[[Any], tuple[Any, str | None]]  # value -> (stored value, what was changed or None)


@dataclass(frozen=True)
class FittedRow:
    """Values ready to store, and one line per value that had to change (empty when none did)."""

    values: dict[str, Any]
    changes: list[str]


class ColumnLimits:
    """The storable range of every column of ``table``, read once from its definition.

    ``fit(values)`` returns the values bounded to their columns; keys that are not columns pass unchanged.
    """

    def __init__(self, table: FromClause) -> None:
        self.table = table
        self._fits: dict[str, _Fit] = {
            column.key: _fit_for(column) for column in table.columns if isinstance(column, Column)}

    def fit(self, values: Mapping[str, Any]) -> FittedRow:
        fitted: dict[str, Any] = {}
        changes: list[str] = []
        for key, value in values.items():
            fit = self._fits.get(key)
            if fit is None:
                fitted[key] = value
                continue
            fitted[key], change = fit(value)
            if change is not None:
                changes.append(f"{key}: {change}")
        return FittedRow(fitted, changes)


def _fit_for(column: Column[Any]) -> _Fit:
    kind = column.type
    nullable = bool(column.nullable)
    if isinstance(kind, String):
        return _text_fit(kind.length, nullable, unique=bool(column.unique or column.primary_key))
    if isinstance(kind, Boolean):
        return _nullable(nullable, False, lambda value: (bool(value), None))
    if isinstance(kind, Integer):
        low, high = integer_range(column)
        return _nullable(nullable, _nearest_to_zero(low, high), lambda value: _fit_int(value, low, high))
    if isinstance(kind, (Float, Numeric)):
        low_f = float(column.info.get("minimum", -sys.float_info.max))
        high_f = float(column.info.get("maximum", sys.float_info.max))
        return _nullable(nullable, _nearest_to_zero(low_f, high_f), lambda value: _fit_float(value, low_f, high_f))
    if isinstance(kind, DateTime):
        return _nullable(nullable, None, _fit_datetime)
    return lambda value: (value, None)


def integer_range(column: Column[Any]) -> tuple[int, int]:
    """The integers an integer column can store on both databases (its ``info`` bounds included): what a value
    chosen by an operator (a key's limits, its priority) is checked against before it is stored, where
    bounding it silently would be wrong."""
    span = next(size for type_, size in _INT_RANGES if isinstance(column.type, type_))
    return max(-span, column.info.get("minimum", -span)), min(span - 1, column.info.get("maximum", span - 1))


def _nearest_to_zero(low: Any, high: Any) -> Any:
    """What a missing or non-numeric value is stored as: 0 where the column allows it, else the closest bound."""
    return min(max(0, low), high)


def _nullable(nullable: bool, empty: Any, fit: _Fit) -> _Fit:
    """``fit`` for values, and None kept where the column allows it or replaced by ``empty`` where not."""
    def fitted(value: Any) -> tuple[Any, str | None]:
        if value is not None:
            return fit(value)
        if nullable:
            return None, None
        replacement = fit(empty)[0] if empty is not None else datetime.now(timezone.utc)
        return replacement, "None in a NOT NULL column, stored as a default"
    return fitted


def _text_fit(length: int | None, nullable: bool, unique: bool) -> _Fit:
    def fit(value: Any) -> tuple[Any, str | None]:
        if type(value) is str and (length is None or len(value) <= length) and value.isascii() \
                and "\x00" not in value:
            return value, None  # the common case, first: record() runs on every request
        changes: list[str] = []
        if not isinstance(value, str):
            value, changes = _as_text(value), [f"{type(value).__name__} stored as text"]
        if "\x00" in value:
            value, changes = value.replace("\x00", _REPLACEMENT), [*changes, "NUL characters replaced"]
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:  # lone surrogates (JSON "\ud800"): no driver can encode them
                value = _SURROGATES.sub(_REPLACEMENT, value)
                changes.append("characters UTF-8 cannot encode replaced")
        if length is not None and len(value) > length:
            changes.append(f"{len(value)} characters cut to {length}")
            value = _shortened(value, length, unique)
        return value, "; ".join(changes) or None
    return _nullable(nullable, "", fit)


def _shortened(value: str, length: int, unique: bool) -> str:
    """``value`` cut to ``length`` characters; a unique column's value keeps a digest of the whole value as its
    last characters, so two long values that share a prefix (the gateway appends ``~`` and 8 random hex digits
    to a client's own request id) stay two values, and the same value always shortens the same way."""
    if not unique or length <= _UNIQUE_SUFFIX_HEX + 1:
        return value[:length]
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:_UNIQUE_SUFFIX_HEX]
    return f"{value[:length - _UNIQUE_SUFFIX_HEX - 1]}~{digest}"


def _as_text(value: Any) -> str:
    try:
        return str(value)
    except ValueError:  # an int past sys.get_int_max_str_digits()
        return f"<{type(value).__name__}>"


def _fit_int(value: Any, low: int, high: int) -> tuple[int, str | None]:
    if type(value) is int and low <= value <= high:
        return value, None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = int(value)
        except (TypeError, ValueError, OverflowError):
            stored = _nearest_to_zero(low, high)
            return stored, f"{type(value).__name__} is not a number, stored as {stored}"
    if isinstance(value, float):
        if math.isnan(value):
            return _nearest_to_zero(low, high), f"NaN stored as {_nearest_to_zero(low, high)}"
        if math.isinf(value):
            return (high, f"inf stored as {high}") if value > 0 else (low, f"-inf stored as {low}")
        value = int(value)
    if value < low:
        return low, f"{_describe(value)} raised to {low}"
    if value > high:
        return high, f"{_describe(value)} lowered to {high}"
    return value, None


def _fit_float(value: Any, low: float, high: float) -> tuple[float, str | None]:
    if type(value) is float and low <= value <= high:  # NaN fails every comparison and falls through
        return value, None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a double
        number = math.inf if value > 0 else -math.inf
    except (TypeError, ValueError):
        stored = float(_nearest_to_zero(low, high))
        return stored, f"{type(value).__name__} is not a number, stored as {stored}"
    if math.isnan(number):
        stored = float(_nearest_to_zero(low, high))
        return stored, f"NaN stored as {stored}"
    if number < low:
        return low, f"{_describe(number)} raised to {low}"
    if number > high:
        return high, f"{_describe(number)} lowered to {high}"
    return number, None


def _fit_datetime(value: Any) -> tuple[datetime, str | None]:
    if isinstance(value, datetime):
        return value, None
    return datetime.now(timezone.utc), f"{type(value).__name__} is not a datetime, stored as now"


def _describe(number: int | float) -> str:
    """A number for a log line: short ones as they are, a huge int by its size (printing it could itself
    raise past ``sys.get_int_max_str_digits()``, and would flood the log)."""
    if isinstance(number, int) and number.bit_length() > 64:
        digits = int(number.bit_length() * math.log10(2)) + 1
        return f"{'a negative' if number < 0 else 'an'} integer of about {digits} digits"
    return repr(number)
