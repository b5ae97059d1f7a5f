"""The one way a command declares a flag: every flag also reads ``RERANKD_<FLAG>`` from the environment.

Why its own module: every room's command (serve, gateway, ui, up, eval, bench, alert-relay) declares its
flags with it, and none of them may import ``rerankd.cli`` (the entry point imports them).

A command whose settings are a pydantic model declares its flags with :func:`settings_options`: the flag,
its default, range, choices and help are read from the model's fields, so each is written once, in the model.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
import click
from pydantic import BaseModel
from pydantic.fields import FieldInfo

__all__ = ["env_option", "settings_argv", "settings_options"]

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def env_option(*names: str, **kwargs: Any) -> Decorator:
    """A click option whose environment variable is ``RERANKD_`` + the long flag in upper snake case."""
    # "--prefix-reuse/--no-prefix-reuse" names one flag: its variable is RERANKD_PREFIX_REUSE (true/false).
    long_name = next(n for n in names if n.startswith("--")).split("/")[0]
    kwargs.setdefault("envvar", "RERANKD_" + long_name[2:].replace("-", "_").upper())
    kwargs.setdefault("show_envvar", True)
    kwargs.setdefault("show_default", True)
    return click.option(*names, **kwargs)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _value_type(annotation: Any) -> Any:
    """``int`` for ``int | None``, ``str`` for ``tuple[str, ...]``: the type a flag's value is parsed as."""
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = (a for a in get_args(annotation) if a is not type(None))
    if _repeatable(annotation):
        return get_args(annotation)[0]
    return annotation


def _repeatable(annotation: Any) -> bool:
    """A ``tuple[X, ...]`` setting is a flag given once per value (``--served-model-name a --served-model-name
    b``; its variable holds the values separated by spaces)."""
    args = get_args(annotation)
    return get_origin(annotation) is tuple and len(args) == 2 and args[1] is Ellipsis


def _click_type(field: FieldInfo) -> Any:
    """The click type that accepts exactly what the field accepts: choices for a Literal, ranges from
    ``ge``/``gt``/``le``/``lt``."""
    value_type = _value_type(field.annotation)
    if get_origin(value_type) is Literal:
        return click.Choice([str(a) for a in get_args(value_type)])
    bounds: dict[str, Any] = {}
    for rule in field.metadata:
        if isinstance(rule, annotated_types.Ge):
            bounds["min"] = rule.ge
        elif isinstance(rule, annotated_types.Gt):
            bounds.update(min=rule.gt, min_open=True)
        elif isinstance(rule, annotated_types.Le):
            bounds["max"] = rule.le
        elif isinstance(rule, annotated_types.Lt):
            bounds.update(max=rule.lt, max_open=True)
    if value_type is int:
        return click.IntRange(**bounds) if bounds else click.INT
    if value_type is float:
        return click.FloatRange(**bounds) if bounds else click.FLOAT
    if value_type is str:
        return click.STRING
    raise TypeError(f"no flag type for a setting of type {field.annotation!r}")


def _field_option(name: str, field: FieldInfo) -> Decorator:
    secret = not field.repr
    common: dict[str, Any] = {"help": field.description, "show_default": not secret}
    if field.is_required():
        return env_option(_flag(name), name, required=True, type=_click_type(field), **common)
    if _value_type(field.annotation) is bool:
        return env_option(f"{_flag(name)}/--no-{_flag(name)[2:]}", name, default=field.default, **common)
    if _repeatable(field.annotation):
        return env_option(_flag(name), name, type=_click_type(field), default=field.default, multiple=True,
                          **{**common, "show_default": False})
    return env_option(_flag(name), name, type=_click_type(field), default=field.default, **common)


def settings_options(model: type[BaseModel], names: Iterable[str] | None = None) -> Decorator:
    """One click option per field of ``model`` (or per field in ``names``), in the model's order.

    ``--max-model-len`` for ``max_model_len``, reading ``RERANKD_MAX_MODEL_LEN``; ``--x/--no-x`` for a bool.
    The click parameter is named after the field, so ``model(**params)`` builds the settings.
    """
    wanted = list(model.model_fields) if names is None else list(names)
    options = [_field_option(name, model.model_fields[name]) for name in wanted]

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):  # click lists options in the order their decorators are written
            command = option(command)
        return command

    return decorate


def settings_argv(settings: BaseModel, names: Iterable[str]) -> list[str]:
    """The flags that give a process ``settings``' values for ``names``, leaving out the defaults (the
    child's own defaults are the same ones) and unset values."""
    fields: Mapping[str, FieldInfo] = type(settings).model_fields
    argv: list[str] = []
    for name in names:
        value = getattr(settings, name)
        if value is None or (not fields[name].is_required() and value == fields[name].default):
            continue
        if isinstance(value, bool):
            argv.append(_flag(name) if value else f"--no-{_flag(name)[2:]}")
        elif isinstance(value, tuple):
            argv.extend(arg for item in value for arg in (_flag(name), str(item)))
        else:
            argv.extend([_flag(name), str(value)])
    return argv
