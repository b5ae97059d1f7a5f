"""Where the model comes from: a local directory or a Hugging Face Hub id.

Why: a server must start offline from a directory and, with network, from a Hub id, and when it
cannot, say in one sentence what to pass instead. Downloads go through ``huggingface_hub`` (with its
progress bars) and reuse the local cache first, so a warm cache never touches the network.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_MAX_MODEL_LEN",
    "ModelSourceError",
    "load_tokenizer",
    "model_max_length",
    "resolve_model",
]

DEFAULT_MAX_MODEL_LEN = 32768

_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "merges.txt", "vocab.json"]
_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_LOCAL_HINT = "--model PATH (a directory with config.json, model weights and tokenizer files)"


class ModelSourceError(RuntimeError):
    """The model could be neither found locally nor downloaded."""


def _looks_like_path(model: str) -> bool:
    return (
        model.startswith(("/", "./", "../", "~"))
        or model in (".", "..")
        or os.path.exists(os.path.expanduser(model))
    )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _unreadable(local: Path) -> str | None:
    """Why this user cannot read the model at ``local`` (a permission problem), or None.

    ``Path.is_dir()`` and ``is_file()`` answer False for a path they may not look at, which would report a
    directory without read permission as missing. Here a ``stat`` that is refused, or a directory,
    config.json or any other file of the model that exists but is not readable, names the path and the
    permission instead.
    """
    config = local / "config.json"
    try:
        local.stat()
        config.stat()
    except PermissionError as exc:
        return f"permission denied: {exc.filename}"
    except OSError:
        pass  # missing: reported by the caller as not found
    if local.is_dir() and not os.access(local, os.R_OK | os.X_OK):
        return f"permission denied: {local} (the directory must be readable and searchable)"
    if config.is_file() and not os.access(config, os.R_OK):
        return f"permission denied: {config}"
    if local.is_dir() and config.is_file():
        # transformers reports a weights or tokenizer file it may not open as "No such file or directory".
        for entry in sorted(local.iterdir()):
            if entry.is_file() and not os.access(entry, os.R_OK):
                return f"permission denied: {entry} (every file of the model must be readable)"
    return None


def _as_user() -> str:
    return f" as user id {os.getuid()}" if hasattr(os, "getuid") else ""


def _download(model: str, *, revision: str | None, cache_dir: str | None, local_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    kwargs: dict[str, Any] = {
        "repo_id": model,
        "revision": revision,
        "cache_dir": cache_dir,
        "allow_patterns": _ALLOW_PATTERNS,
    }
    if local_only:
        kwargs["local_files_only"] = True
    return Path(snapshot_download(**kwargs))


def resolve_model(model: str, *, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """Return a local directory holding the model's config, weights and tokenizer.

    ``revision`` (``--revision``): the Hub branch, tag or commit of an ``org/name`` id, looked up in the cache
    first and downloaded otherwise; a local directory is what it is, and ignores it.

    * an existing directory with ``config.json`` is returned as is;
    * a path-like string without ``config.json`` raises ``ModelSourceError``;
    * an ``org/name`` id is taken from the Hugging Face cache if there, else downloaded.
    """
    local = Path(model).expanduser()
    denied = _unreadable(local)
    if denied:
        raise ModelSourceError(
            f"cannot read model directory '{model}' ({denied}){_as_user()}; make it readable by the server's "
            f"user, or pass {_LOCAL_HINT}"
        )
    if local.is_dir() and (local / "config.json").is_file():
        return local
    if _looks_like_path(model) or not _HF_ID.match(model):
        if local.is_dir():
            raise ModelSourceError(
                f"model directory '{model}' has no config.json; pass {_LOCAL_HINT}"
            )
        raise ModelSourceError(
            f"model path '{model}' does not exist (config.json not found) and is not a Hugging Face "
            f"id like 'org/name'; pass {_LOCAL_HINT}"
        )

    try:
        path = _download(model, revision=revision, cache_dir=cache_dir, local_only=True)
        if (path / "config.json").is_file():
            return path
    except KeyboardInterrupt:
        raise
    except Exception:
        pass  # not cached (or only partly): go online

    try:
        path = _download(model, revision=revision, cache_dir=cache_dir, local_only=False)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        raise ModelSourceError(
            f"could not download model '{model}' from the Hugging Face Hub ({_reason(exc)}). "
            f"Without network, pass a local directory: {_LOCAL_HINT}"
        ) from exc
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"model '{model}' from the Hugging Face Hub has no config.json; pass {_LOCAL_HINT}"
        )
    return path


def load_tokenizer(path: str | Path) -> Any:
    """The model's tokenizer, loaded from the local directory."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def model_max_length(path: str | Path, cap: int = DEFAULT_MAX_MODEL_LEN) -> int:
    """``max_position_embeddings`` from config.json, at most ``cap``; ``cap`` when absent or unreadable."""
    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return cap
    value = config.get("max_position_embeddings") if isinstance(config, dict) else None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return cap
    return min(value, cap)
