"""The Gradio web UI (``rerankd ui``): try a query against the rerank API and read the ranking.

Rooms: ``documents`` turns pasted text and uploaded files into a document list, ``upstream`` sets up
the rerank API client (:mod:`rerankd.client`) and the embedding client (``embedder``) for the page and
words every failure as one human sentence, ``failures`` shows it in the page, ``search`` holds the search
tab's arithmetic (corpus limits, cosine top-k, the vector cache) and ``search_page`` its layout and handler,
``app`` lays out the page (the Rank and Search tabs), ``command`` is the CLI. ``build_ui`` is imported
lazily so that ``rerankd.ui.documents``, ``rerankd.ui.search`` and ``rerankd.ui.upstream`` work without
Gradio installed.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_ui"]


def __getattr__(name: str) -> Any:
    if name == "build_ui":
        from rerankd.ui.app import build_ui

        return build_ui
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
