"""The limits every rerankd HTTP process puts on its clients at the connection level, as settings fields.

Why its own module, outside ``rerankd.http``: ``ServerSettings`` and ``GatewaySettings`` inherit these
fields (one default, range and help text for both ``serve`` and ``gateway`` flags), and the settings are
imported by ``rerankd serve --help``, which must not pay for FastAPI. ``rerankd.http.serving`` turns them
into uvicorn's configuration; docs/limits.md lists them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

__all__ = ["DEFAULT_MAX_REQUEST_CHARS", "EdgeSettings"]


# Characters of query, instruction and documents one scoring request may carry (server and gateway alike):
# ~2M English tokens, so tokenizing is bounded to seconds of one core. Here, not in rerankd.admission, so that
# `rerankd serve --help` (which reads the settings) imports no FastAPI.
DEFAULT_MAX_REQUEST_CHARS = 8_000_000

class EdgeSettings(BaseModel):
    """What a hostile or broken client may hold of a process: header size, time, idle connections, and
    whose ``X-Forwarded-For`` is believed."""

    max_header_bytes: int = Field(
        default=32 * 1024, ge=1024,
        description="Largest request head (request line + headers), counted while it arrives; 431 and the "
                    "connection closed past it.")
    max_header_lines: int = Field(default=100, ge=8, description="Most header lines a request may send (431 past it).")
    header_timeout: float = Field(
        default=10.0, gt=0,
        description="Seconds from a connection (or a request's first byte) to its headers complete; 408 and "
                    "closed after it (slowloris guard).")
    body_deadline: float = Field(
        default=60.0, gt=0,
        description="Seconds a client has to send its whole body, however it trickles (408 after it); "
                    "--body-timeout is the longest silence within it.")
    # Longer than the keep-alive expiry of the usual clients (httpx 5 s, aiohttp 15 s): a server that closes an
    # idle connection at the moment a client reuses it answers that request with a reset (a soak run saw one).
    idle_timeout: float = Field(default=20.0, gt=0, description="Seconds an idle keep-alive connection stays open.")
    forwarded_allow_ips: str = Field(
        default="",
        description="Comma-separated proxy addresses (or *) whose X-Forwarded-For/-Proto are believed as the "
                    "client's; empty: nobody's, the peer address is the client.")
