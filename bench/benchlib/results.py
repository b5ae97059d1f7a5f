"""Where a benchmark's numbers go: one JSON file per run under ``bench/results/``, which bench/README.md quotes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["write_result"]


def write_result(path: str | Path, result: Any) -> Path:
    """Write ``result`` to ``path`` as indented JSON (its folder made if missing); return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out
