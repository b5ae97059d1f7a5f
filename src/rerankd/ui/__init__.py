"""The Gradio web UI (``rerankd ui``): try a query against the rerank API and read the ranking.

Rooms: ``documents`` turns pasted text and uploaded files into a document list, ``upstream`` sets up
the rerank API client (:mod:`rerankd.client`) for the page and words every failure as one human
sentence, ``app`` lays out the page, ``command`` is the CLI. ``build_ui`` is imported lazily so that
``rerankd.ui.documents`` and ``rerankd.ui.upstream`` work without Gradio installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_ui"]


def __getattr__(name: str) -> Any:
    if name == "build_ui":
        from rerankd.ui.app import build_ui

        return build_ui
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
