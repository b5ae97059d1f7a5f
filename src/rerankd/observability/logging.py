"""Log set-up: JSON lines for machines, plain text on a terminal.

Why stdlib logging with a JSON formatter: uvicorn, transformers and our code all log through it, so one
formatter covers every line. Fields passed with ``extra=`` (request_id, route, status, latency_ms,
key_id …) become JSON keys; secrets are never passed. While tracing is on (``--otlp-endpoint``), a line
written inside a span carries its ``trace_id`` and ``span_id``, so a log line leads to its trace and back.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from typing import Literal

from rerankd.observability.tracing import ids_of_current

__all__ = ["JsonFormatter", "LogFormat", "LogLevel", "configure_logging"]

# The --log-level / --log-format choices of every long-running command.
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "json", "text"]

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ids = ids_of_current()
        if ids is not None:
            out["trace_id"], out["span_id"] = ids
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def configure_logging(level: str = "info", fmt: str = "auto", log_file: str | None = None) -> None:
    """``fmt``: ``json``, ``text`` or ``auto`` (text on a terminal, JSON otherwise)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    formatter: logging.Formatter = (
        JsonFormatter() if use_json else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        handlers.append(logging.handlers.RotatingFileHandler(log_file, maxBytes=50 * 2**20, backupCount=5))
    for h in handlers:
        h.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our access line carries the request id
    # Per-request client lines (health checks every few seconds) and migration chatter drown real events.
    for chatty in ("httpx", "httpcore", "alembic"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
