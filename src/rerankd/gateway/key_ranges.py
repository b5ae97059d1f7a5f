"""The values an API key's limits and priority may take: what the ``api_keys`` columns store on both databases.

Why its own module without SQLAlchemy: ``rerankd keys --help`` and the flag ranges are built without the gateway
extra's imports. The numbers are the INTEGER columns' range on PostgreSQL (SQLite would store any integer);
:func:`rerankd.gateway.column_limits.integer_range` on the columns gives the same (a unit test holds them equal).
A value outside is refused with the range, never bounded: an operator chose it.
"""

from __future__ import annotations

__all__ = ["LIMIT_RANGE", "PRIORITY_RANGE"]

PRIORITY_RANGE = (-(2**31), 2**31 - 1)
"""A key's default ``priority`` (lower is served earlier)."""
LIMIT_RANGE = (1, 2**31 - 1)
"""A key's requests or tokens per minute (unset: unlimited)."""
