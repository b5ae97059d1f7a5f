"""CPU settings a benchmark script applies to itself: its ``malloc`` and oneDNN's matmul precision."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator

from rerankd.allocator import MALLOC_CHOICES

__all__ = ["add_malloc_option", "mkldnn_bf16_matmuls"]


def add_malloc_option(parser: argparse.ArgumentParser) -> None:
    """The scripts' ``--malloc``: the allocator they re-execute themselves under (``rerankd.allocator.use_allocator``).

    Default ``system``: what a plain ``python`` gets, so a baseline is timed as its users run it.
    """
    parser.add_argument("--malloc", choices=MALLOC_CHOICES, default="system",
                        help="re-run this script under tcmalloc/jemalloc (as `rerankd serve --malloc` does); the "
                             "allocator is per process, so everything one run measures shares it")


@contextlib.contextmanager
def mkldnn_bf16_matmuls() -> Iterator[None]:
    """fp32 tensors, but oneDNN multiplies them with bf16 inputs and fp32 accumulation (where the build allows)."""
    import torch

    matmul = torch.backends.mkldnn.matmul
    old = matmul.fp32_precision
    matmul.fp32_precision = "bf16"
    try:
        yield
    finally:
        matmul.fp32_precision = old
