"""Ways to run the Qwen3 decoder for scoring, behind one interface (:class:`Decoder`).

Importing this package imports torch: :mod:`rerankd.engine.backends.torch_backend` imports it when a
backend is built, not at module import (the CLI must start before torch is loaded).
"""

from rerankd.engine.backends.decoders.base import Decoder, KVCacheHandle, WarmUpRun
from rerankd.engine.backends.decoders.fused import FusedDecoder
from rerankd.engine.backends.decoders.transformers_forward import TransformersDecoder

__all__ = ["Decoder", "FusedDecoder", "KVCacheHandle", "TransformersDecoder", "WarmUpRun"]
