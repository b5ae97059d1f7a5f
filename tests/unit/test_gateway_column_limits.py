"""ColumnLimits: every value fitted to what its column can store, with the limits read from the table."""

from __future__ import annotations

import math
import sys
from datetime import datetime

from sqlalchemy import BigInteger, Column, DateTime, Float, Integer, MetaData, SmallInteger, String, Table, Text

from rerankd.gateway.column_limits import ColumnLimits
from rerankd.gateway.db import UsageRecord
from rerankd.gateway.ledger import UsageEntry

TABLE = Table(
    "t", MetaData(),
    Column("id", String(32), unique=True, nullable=False),
    Column("name", String(8), nullable=True),
    Column("note", Text, nullable=False),
    Column("small", SmallInteger, nullable=False),
    Column("count", Integer, nullable=False, info={"minimum": 0}),
    Column("big", BigInteger, nullable=True),
    Column("code", Integer, nullable=False, info={"minimum": 100, "maximum": 599}),
    Column("ms", Float, nullable=False, info={"minimum": 0.0}),
    Column("ratio", Float, nullable=False),
    Column("at", DateTime, nullable=False),
)
LIMITS = ColumnLimits(TABLE)


def fit(**values: object) -> tuple[dict[str, object], list[str]]:
    fitted = LIMITS.fit(values)
    return fitted.values, fitted.changes


def test_integer_ranges_come_from_the_column_types_and_info() -> None:
    assert fit(small=40_000, count=2**40, big=2**70, code=7)[0] == {
        "small": 2**15 - 1, "count": 2**31 - 1, "big": 2**63 - 1, "code": 100}
    assert fit(small=-40_000, count=-5, big=-(2**70), code=1000)[0] == {
        "small": -(2**15), "count": 0, "big": -(2**63), "code": 599}
    assert fit(small=7, count=3, big=None, code=200) == ({"small": 7, "count": 3, "big": None, "code": 200}, [])


def test_a_huge_integer_is_clamped_and_described_without_printing_it() -> None:
    huge = 10**(sys.get_int_max_str_digits() + 100)  # str(huge) itself would raise
    values, changes = fit(count=huge, ms=huge)
    assert values == {"count": 2**31 - 1, "ms": sys.float_info.max}
    assert any("integer of about" in change and "digits" in change for change in changes)
    assert len(" ".join(changes)) < 300


def test_floats_are_finite_and_in_range() -> None:
    values, changes = fit(ms=math.nan, ratio=-math.inf)
    assert values == {"ms": 0.0, "ratio": -sys.float_info.max}
    assert len(changes) == 2
    assert fit(ms=-3.5, ratio=math.inf)[0] == {"ms": 0.0, "ratio": sys.float_info.max}
    assert fit(ms=12.5, ratio=-0.5) == ({"ms": 12.5, "ratio": -0.5}, [])


def test_non_numbers_become_numbers() -> None:
    assert fit(count="12", code="x", small=None)[0] == {"count": 12, "code": 100, "small": 0}
    assert fit(count=3.9, code=True)[0] == {"count": 3, "code": 100}


def test_text_is_cut_to_its_length_and_made_storable() -> None:
    assert fit(name="abcdefghij") == ({"name": "abcdefgh"}, ["name: 10 characters cut to 8"])
    values, changes = fit(name="a\x00b", note="x\ud800y" * 10_000)
    assert values["name"] == "a\ufffdb" and "\x00" not in values["name"]
    assert isinstance(values["note"], str) and len(values["note"]) == 30_000  # Text: no length to cut to
    values["note"].encode("utf-8")  # lone surrogates replaced: every driver can encode it now
    assert len(changes) == 2
    assert fit(name=None, note=None)[0] == {"name": None, "note": ""}  # NULL only where the column allows it
    assert fit(name=12345)[0] == {"name": "12345"}


def test_a_unique_value_cut_to_length_stays_unique_and_stable() -> None:
    a, b = "r" * 40 + "~0123abcd", "r" * 40 + "~89abcdef"
    cut_a, cut_b = fit(id=a)[0]["id"], fit(id=b)[0]["id"]
    assert isinstance(cut_a, str) and isinstance(cut_b, str)
    assert len(cut_a) == len(cut_b) == 32 and cut_a != cut_b and cut_a.startswith("r" * 15)
    assert cut_a == fit(id=a)[0]["id"]  # the same row id always maps to the same stored id (retries dedupe)
    assert fit(id="short")[0]["id"] == "short"


def test_datetimes_and_unknown_keys() -> None:
    now = datetime(2026, 3, 1)
    assert fit(at=now, other=[1, 2]) == ({"at": now, "other": [1, 2]}, [])
    values, changes = fit(at="yesterday")
    assert isinstance(values["at"], datetime) and changes


def test_usage_entries_are_fitted_to_usage_records() -> None:
    good = UsageEntry(request_id="r", key_id=None, model="m", documents=1, tokens=2, latency_ms=3.0, status=200,
                      route="/v1/rerank")
    assert good.fitted() == (good, []) and good.fitted()[0] is good  # nothing to change: no copy
    bad, changes = UsageEntry(request_id="r" * 137, key_id="k", model="m" * 300, documents=-1, tokens=10**4000,
                              latency_ms=math.nan, status=0, route="/v1/rerank").fitted()
    limit = UsageRecord.__table__.c.request_id.type.length
    assert len(bad.request_id) == limit == 128 and len(bad.model) == 256
    assert (bad.documents, bad.tokens, bad.latency_ms, bad.status) == (0, 2**31 - 1, 0.0, 100)
    assert len(changes) == 6
