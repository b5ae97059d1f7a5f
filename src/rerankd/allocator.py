"""The serving process's ``malloc``: re-executing ``rerankd serve`` under tcmalloc or jemalloc.

Why: a CPU forward pass allocates and frees activations of tens of MB per op (the MLP's 3072-wide
intermediates are 50 MB at 8192 tokens). glibc serves every allocation above 32 MB with a fresh
``mmap`` and returns it with ``munmap`` on free, so each op first-touches new pages: the kernel faults
and zeroes them, and the op runs at page-fault speed. On this project's AMX machine SiLU over a 64 MB
tensor ran at 1.5 G elements/s under glibc against 3.7 under tcmalloc, which keeps freed pages
(``bench/results/cpu_allocator_amx.json``); the whole 64-document request went from 15.3 s to 12.3 s.

A process cannot change its allocator once it runs, so the serve command re-executes itself (same PID,
same arguments) with the library in ``LD_PRELOAD`` before it imports torch. ``--malloc system`` keeps glibc.
"""

from __future__ import annotations

import ctypes.util
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal, get_args

__all__ = ["MALLOC_CHOICES", "AllocatorError", "MallocChoice", "auto_applies", "find_library", "loaded_allocator",
           "preload_entries", "preload_env", "use_allocator"]

MallocChoice = Literal["auto", "tcmalloc", "jemalloc", "system"]
MALLOC_CHOICES: tuple[str, ...] = get_args(MallocChoice)

log = logging.getLogger(__name__)

# Shared-object names per allocator, best first, and the Debian/Ubuntu package that ships each.
_SONAMES: dict[str, tuple[str, ...]] = {
    "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"),
    "jemalloc": ("libjemalloc.so.2",),
}
_PACKAGES = {"tcmalloc": "libtcmalloc-minimal4", "jemalloc": "libjemalloc2"}
_SEARCH_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
                "/usr/local/lib", "/opt/conda/lib")
# jemalloc's defaults hand freed pages back to the kernel after 10 s (dirty) and purge lazily: the page
# faults come back. Keep them (the peak is reused by the next batch); background threads do the bookkeeping.
_JEMALLOC_CONF = "background_thread:true,metadata_thp:auto,dirty_decay_ms:-1,muzzy_decay_ms:-1"
# Set in the re-executed process, so a library that fails to load cannot cause an exec loop.
_REEXEC_MARK = "RERANKD_MALLOC_REEXEC"


class AllocatorError(RuntimeError):
    """The asked-for allocator cannot be used; the message says what to install or which flag to use."""


def auto_applies(backend: str, device: str) -> bool:
    """Whether ``--malloc auto`` should act for this server: wherever the torch backend may run on the CPU.

    A server told ``--backend vllm`` or ``--device cuda`` keeps its allocator: its activations live in GPU
    memory, and vLLM's own processes are left as vLLM ships them.
    """
    return backend != "vllm" and device != "cuda"


def loaded_allocator(maps: Path = Path("/proc/self/maps")) -> str | None:
    """``tcmalloc`` / ``jemalloc`` when that library is mapped into this process, else None (glibc)."""
    try:
        text = maps.read_text()
    except OSError:
        return None
    for name in _SONAMES:
        if f"lib{name}" in text:
            return name
    return None


def find_library(name: str, search_dirs: Sequence[str] = _SEARCH_DIRS) -> Path | None:
    """The path of ``name``'s shared library on this machine, or None."""
    for directory in search_dirs:
        for soname in _SONAMES[name]:
            candidate = Path(directory) / soname
            if candidate.exists():
                return candidate
    if search_dirs is _SEARCH_DIRS:  # the dynamic loader's own cache, for unusual layouts
        found = ctypes.util.find_library(_SONAMES[name][0].removeprefix("lib").split(".so")[0])
        if found:
            return Path(found)
    return None


def preload_entries(value: str) -> list[str]:
    """The libraries an ``LD_PRELOAD`` value names: the dynamic loader separates them by colons or whitespace."""
    return [entry for entry in re.split(r"[:\s]+", value) if entry]


def preload_env(name: str, library: Path, env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with ``library`` first in ``LD_PRELOAD`` and the allocator's settings (user's win)."""
    out = dict(env)
    out["LD_PRELOAD"] = " ".join([str(library), *preload_entries(out.get("LD_PRELOAD", ""))])
    if name == "jemalloc":
        out.setdefault("MALLOC_CONF", _JEMALLOC_CONF)
    else:
        # A 32k-token document allocates > 1 GB at once; tcmalloc would print a warning for each.
        out.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
    out[_REEXEC_MARK] = name
    return out


def use_allocator(choice: str, *, argv: Sequence[str] | None = None, search_dirs: Sequence[str] = _SEARCH_DIRS) -> str:
    """Make this process run under ``choice`` (``auto``: tcmalloc, else jemalloc, else glibc).

    Returns the allocator in use when it is already the right one. Otherwise re-executes the current
    command line (``argv``, default ``sys.orig_argv``) with the library preloaded — this call then does
    not return. Raises :class:`AllocatorError` when an explicitly named allocator is not installed.
    """
    if choice not in MALLOC_CHOICES:
        raise AllocatorError(f"--malloc must be one of {', '.join(MALLOC_CHOICES)}, not {choice!r}")
    current = loaded_allocator() or "system"
    if choice == "system" or current == choice or (choice == "auto" and current != "system"):
        return current
    if os.environ.get(_REEXEC_MARK):
        # Already re-executed and the library still is not mapped (a loader refused it): do not loop.
        log.warning("LD_PRELOAD of %s did not take effect; serving with %s malloc", os.environ[_REEXEC_MARK], current)
        return current
    candidates = ["tcmalloc", "jemalloc"] if choice == "auto" else [choice]
    for name in candidates:
        library = find_library(name, search_dirs)
        if library is not None:
            args = list(argv if argv is not None else sys.orig_argv)
            log.info("re-executing under %s (%s) for faster CPU allocations; --malloc system keeps glibc",
                     name, library)
            sys.stdout.flush()
            sys.stderr.flush()
            os.execve(sys.executable, [sys.executable, *args[1:]], preload_env(name, library, os.environ))
    if choice != "auto":
        raise AllocatorError(f"--malloc {choice}: {_SONAMES[choice][0]} not found; install {_PACKAGES[choice]} "
                             f"(apt-get install -y {_PACKAGES[choice]}) or use --malloc auto / --malloc system")
    log.warning("neither tcmalloc nor jemalloc is installed: serving with glibc malloc, whose page faults slow "
                "the CPU forward by ~20%% (bench/results/cpu_allocator_amx.json); apt-get install -y "
                "libtcmalloc-minimal4")
    return current
