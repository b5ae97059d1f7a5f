"""Bulk work on threads of a lower OS priority, so that the kernel, not the batcher, hands the cores to small
requests.

Why: on a CPU replica a request of a thousand documents takes many forward passes and half a second of
tokenization, and neither can be preempted. The batcher already interleaves a small request's rows with the bulk
rows (:mod:`rerankd.engine.batching`), but what a small request then waits for is CPU time: the other replica's
bulk passes, the tokenizer's thread pool and this replica's own bulk pass all ran on the same cores at the same
priority (docs/reliability.md measured a 1-document request at 8.3x its calm p99 beside giant requests, 169 of
its 179 ms spent inside the replica). Here bulk forward passes run on a thread of their own whose nice value is
raised once, when it starts; the threads a thread starts inherit its nice value on Linux, so the OpenMP team
torch starts for that thread's first parallel region runs at the same lower priority, and so does the tokenizers'
Rayon pool when a lower-priority thread creates it (:func:`start_tokenizer_pool`). Raising a thread's nice value
needs no privilege and lowering it back does (``CAP_SYS_NICE``), which is why bulk work gets threads of its own
instead of a priority changed pass by pass.

What stays at the usual priority, on purpose: threads that hold the GIL for long stretches of Python. A bulk
thread descheduled while it holds the GIL stalls the event loop and the interactive pass behind it (a priority
inversion): with the bulk requests' tokenizing thread itself lowered, the small client's p99 beside giant
requests was 345-389 ms, against 169-197 ms with it at the usual priority, and 65-140 ms once the Rayon pool
alone was lowered and the GIL handed over every :data:`SWITCH_INTERVAL_S` instead of 5 ms (docs/reliability.md).

Nice is a share, not a stop: with nothing else to run, a bulk thread takes the whole core; beside a nice-0
thread a nice-10 one gets about a tenth of it (CFS weights 110 against 1024). Priority is relative within a
cgroup (a container, a pod).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["SWITCH_INTERVAL_S", "hand_over_the_gil_often", "lower_priority_executor", "lower_this_threads_priority",
           "start_tokenizer_pool", "thread_nice"]

log = logging.getLogger(__name__)

MAX_NICE = 19
# The GIL switch interval while bulk lanes run (Python's default is 5 ms): a small request's handling takes the
# GIL a few dozen times, and each wait for a bulk thread's Python work was up to one interval. Giant-request p99
# of the small client 113-147 ms with it, 169-375 ms without (tests/reliability/test_hostile.py, quiet machine).
SWITCH_INTERVAL_S = 0.0005


def thread_nice(native_id: int | None = None) -> int:
    """The nice value of one thread (default: the calling one); Linux keeps one per thread."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id() if native_id is None else native_id)


def lower_this_threads_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (capped at 19); warn once per thread where it cannot."""
    if sys.platform != "linux":  # elsewhere PRIO_PROCESS with a thread id is not one thread's priority
        return
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(MAX_NICE, thread_nice() + nice))
    except OSError as exc:  # a seccomp profile may refuse it: bulk work then runs at the usual priority
        log.warning("could not lower the priority of bulk work (%s); it competes with small requests as equals", exc)


def lower_priority_executor(nice: int, thread_name_prefix: str) -> ThreadPoolExecutor:
    """A one-thread executor whose thread runs ``nice`` steps below the process's priority."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name_prefix,
                              initializer=lower_this_threads_priority, initargs=(nice,))


def start_tokenizer_pool(tokenizer: Any, nice: int) -> None:
    """Start the tokenizers' thread pool (Rayon, shared by every batch call in the process) from a thread ``nice``
    steps lower, so its threads inherit that priority; a no-op where the pool is already running.

    Only the pool: the thread that calls the tokenizer for a request stays at the usual priority, as it holds the
    GIL for the prompt building around the batch call (see the module's docstring).
    """
    def start() -> None:
        lower_this_threads_priority(nice)
        tokenizer(["rerankd", "warm-up"], add_special_tokens=False)  # a batch call: Rayon starts its pool

    thread = threading.Thread(target=start, name="rerankd-tokenizer-pool")
    thread.start()
    thread.join()


def hand_over_the_gil_often() -> None:
    """Shorten the interpreter's GIL switch interval to :data:`SWITCH_INTERVAL_S` (never lengthen it)."""
    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
