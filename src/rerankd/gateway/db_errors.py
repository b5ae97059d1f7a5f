"""Which database failures mean "try again later" and which mean "this row will never go in".

Why one function for it: a writer that retries a refused row forever blocks every row behind it, and one
that gives up on a database outage throws rows away. The two must be told apart from the exception alone,
the same way on SQLite and PostgreSQL, whatever wraps it (SQLAlchemy, the asyncio driver adapters).
"""

from __future__ import annotations

import asyncio

from sqlalchemy import exc as sa_exc

__all__ = ["database_unavailable", "failure_reason"]

# PostgreSQL SQLSTATE classes that say "the database cannot take writes now", not "this row is wrong":
# connection (08), read-only standby / transaction state (25), serialization or deadlock (40), schema or
# privileges (42: every row fails alike until it is fixed), resources (53), object in use (55),
# shutdown or restart (57), system I/O (58), internal (XX). Data (22) and integrity (23) refuse one row.
_PG_UNAVAILABLE_CLASSES = frozenset({"08", "25", "40", "42", "53", "55", "57", "58", "XX"})


def database_unavailable(exc: BaseException) -> bool:
    """True when the database could not take any row now (keep them all and retry); False when it refused
    what this statement carried (set the row aside).

    Unavailable: a connection that could not be made or was lost, a pool timeout, SQLite's operational
    errors (locked, read-only, cannot open the file, disk full, no such table) and PostgreSQL's SQLSTATE
    classes in :data:`_PG_UNAVAILABLE_CLASSES`. Anything else (integrity and data errors, and Python errors
    binding the row's values: an integer too large for SQLite, text no codec can encode) is the row's fault.
    Erring that way loses nothing: a set-aside row is stored, and can be re-sent.
    """
    if isinstance(exc, (OSError, asyncio.TimeoutError, sa_exc.TimeoutError, sa_exc.DisconnectionError)):
        return True
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:
        return sqlstate[:2] in _PG_UNAVAILABLE_CLASSES
    return isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError))


def failure_reason(exc: BaseException) -> str:
    """What the database (or driver) said, on one line: the original exception's type and first line."""
    cause = exc.orig if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None else exc
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"[:1000]
