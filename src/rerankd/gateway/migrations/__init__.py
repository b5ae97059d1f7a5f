"""Alembic migrations of the gateway database (keys, usage ledger, audit events)."""
