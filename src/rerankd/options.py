"""The one way a command declares a flag: every flag also reads ``RERANKD_<FLAG>`` from the environment.

Why its own module: every room's command (serve, gateway, ui, up, eval, bench, alert-relay) declares its
flags with it, and none of them may import ``rerankd.cli`` (the entry point imports them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

__all__ = ["env_option"]


def env_option(*names: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A click option whose environment variable is ``RERANKD_`` + the long flag in upper snake case."""
    # "--prefix-reuse/--no-prefix-reuse" names one flag: its variable is RERANKD_PREFIX_REUSE (true/false).
    long_name = next(n for n in names if n.startswith("--")).split("/")[0]
    kwargs.setdefault("envvar", "RERANKD_" + long_name[2:].replace("-", "_").upper())
    kwargs.setdefault("show_envvar", True)
    kwargs.setdefault("show_default", True)
    return click.option(*names, **kwargs)
