"""How a page's handler fails: a ``gr.Error`` for API clients and the toast, and the same words kept inline.

Why a module of its own: the rank and the search pages fail the same way, and a raised ``gr.Error`` alone
is not enough: a failing event cannot update its outputs, so the message is also recorded per browser
session (:class:`LastErrors`) for the ``failure`` follow-up to write where the summary goes.
"""

from __future__ import annotations

import html
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import gradio as gr

__all__ = ["LastErrors", "fail", "show_error", "wire_page_event"]


class LastErrors:
    """The last failure message of each browser session, so the page can also show it inline.

    Why: a raised ``gr.Error`` is what API clients need (``gradio_client`` raises it) and what the page
    shows as a toast, but a failing event cannot update its outputs; the ``failure`` follow-up reads the
    message from here by session and writes it where the summary goes. Bounded: old sessions fall off.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._messages: OrderedDict[str, str] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def record(self, session: str | None, message: str) -> None:
        if not session:
            return
        with self._lock:
            self._messages[session] = message
            self._messages.move_to_end(session)
            while len(self._messages) > self._capacity:
                self._messages.popitem(last=False)

    def pop(self, session: str | None) -> str:
        with self._lock:
            return self._messages.pop(session or "", "")


def fail(errors: LastErrors, request: gr.Request | None, title: str, message: str,
         duration: float | None = 10) -> NoReturn:
    """Record the message for the session's inline line and raise it as the ``gr.Error`` the toast shows."""
    # Escaped: Gradio renders the message as HTML, and the upstream's words (which may echo input) are not ours.
    escaped = html.escape(message, quote=False)
    errors.record(getattr(request, "session_hash", None), f"**{html.escape(title)}**: {escaped}")
    raise gr.Error(escaped, title=title, duration=duration, print_exception=False)


def show_error(errors: LastErrors) -> Callable[[gr.Request], tuple[str, None, None]]:
    """The ``failure`` follow-up of a page's event: the session's message in the summary, table and details cleared."""

    def show(request: gr.Request) -> tuple[str, None, None]:
        # Clear the previous answer too: next to an error message it would read as the answer to this query.
        return errors.pop(request.session_hash), None, None

    return show


def wire_page_event(errors: LastErrors, *, triggers: Sequence[Any], fn: Callable[..., Any], inputs: Sequence[Any],
                    table: Any, summary: Any, details: Any, api_name: str, api_description: str,
                    max_concurrency: int) -> None:
    """Wire a page's one API event (its own concurrency group, named as its route) and the ``failure``
    follow-up that writes the session's message where ``summary`` goes: the rank and the search pages alike."""
    gr.on(
        triggers=triggers,
        fn=fn,
        inputs=inputs,
        outputs=[table, summary, details],
        api_name=api_name,
        api_description=api_description,
        concurrency_limit=max_concurrency,
        concurrency_id=api_name,
    ).failure(show_error(errors), outputs=[summary, table, details], queue=False, api_visibility="private")
