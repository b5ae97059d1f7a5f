"""The transformers/PyTorch backend: CPU and CUDA, the embedded default.

Four things make it faster than the model card's loop while giving the same numbers:

* Only the ``w_yes - w_no`` row of the output layer is used: the final hidden state at the last real
  token is dotted with it in float32. The card computes 151,669 logits for every position.
* Shared-prefix reuse: the system prompt + instruction + query tokens are the same for every document
  of a query. They run once per group; their KV cache is gathered to every row and only the document
  tails run. Attention is causal, so this is exact, not an approximation.
* Rows are right-padded and the last real token is gathered by length, so padding never moves the
  token that is scored.
* On the CPU (``compile="auto"``), the decoder runs :class:`FusedQwen3Forward`: the same weights, with
  each run of element-wise ops compiled into one kernel (see that module for the profile behind it).

Which code runs the layers is a :class:`~rerankd.engine.backends.decoders.Decoder`, chosen at load
(:func:`choose_decoder`); everything above is this module's one loop, the same for every decoder.

Ready fast, fast later: with ``compile="auto"`` on the CPU the backend is ready as soon as the weights are
loaded and serves with transformers' forward (what ``--compile off`` runs) while a background thread
compiles and warms up the fused forward's kernels (46-128 s for the tiny model on a busy 2-core machine).
Once built, the compiled decoder replaces it *between* two forward passes: each pass reads the backend's decoder
once, when it starts, and runs every chunk with that one, so one pass never mixes two decoders (their caches do
not even have the same format), and passes may run at once on two threads (the batcher's bulk lane). A failure
in the background is logged once and transformers' forward stays. ``compile="on"`` still compiles before the
backend is ready: one kernel path, hence one set of numbers, for the server's whole life.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rerankd.engine.backends.base import BackendInfo, TokenGroup, split_by_group
from rerankd.engine.config import BATCH_INVARIANT_CHOICES, COMPILE_CHOICES

if TYPE_CHECKING:
    from rerankd.engine.backends.decoders import Decoder, KVCacheHandle

__all__ = ["COMPILE_CHOICES", "TorchBackend", "choose_decoder", "compiles_in_background", "resolve_device",
           "resolve_dtype"]

log = logging.getLogger(__name__)

# Below this many shared tokens reused at least once, one plain forward is cheaper than two.
_MIN_REUSED_PREFIX_TOKENS = 32


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a CUDA device is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu")
    return device


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AVX-512 BF16 or AMX, where oneDNN runs bf16 matmuls natively."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device: str) -> Any:
    """``auto`` → bf16 where the hardware runs it well (CUDA with bf16, AVX-512 BF16/AMX CPUs), else fp32."""
    import torch

    if dtype != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def choose_decoder(body: Any, compile: str, device: str) -> Decoder:
    """The decoder for ``--compile``: the fused forward with compiled kernels when ``compile`` asks for it
    (``on``) or allows it here (``auto``: CPU only, and only where a C++ compiler builds the kernels);
    transformers' forward otherwise."""
    if compile not in COMPILE_CHOICES:
        raise ValueError(f"compile must be one of {', '.join(COMPILE_CHOICES)}, not {compile!r}")
    from rerankd.engine.backends import qwen3_forward
    from rerankd.engine.backends.decoders import FusedDecoder, TransformersDecoder

    if compile == "off" or (compile == "auto" and device != "cpu"):
        return TransformersDecoder(body)
    problem = qwen3_forward.compile_supported()
    if problem is None:
        try:
            return FusedDecoder(qwen3_forward.FusedQwen3Forward(body, compile_kernels=True))
        except ValueError as exc:
            problem = str(exc)
    if compile == "on":
        raise ValueError(f"--compile on: torch.compile cannot be used here ({problem}); use --compile off")
    log.warning("compiled kernels unavailable (%s); using transformers' forward instead (1.6x slower on an AMX CPU, "
                "bench/results/cpu_throughput_amx.json)", problem)
    return TransformersDecoder(body)


def resolve_batch_invariant(mode: str, device: str) -> bool:
    """``--batch-invariant``: only ``on`` runs each pair alone. ``auto`` is off here on every device: batching is
    the throughput (invariance cost 2.70x the time for 4 documents of the 0.6B shape on the CPU,
    docs/performance.md), as vLLM keeps its batch-invariant mode opt-in; the engine turns ``auto`` on where a
    feature needs it (``--score-cache``). ``device`` is kept for a device where invariance comes free."""
    if mode not in BATCH_INVARIANT_CHOICES:
        raise ValueError(f"batch_invariant must be one of {', '.join(BATCH_INVARIANT_CHOICES)}, not {mode!r}")
    return mode == "on"


class _CompileCancelled(Exception):
    """The backend closed, or the interpreter is exiting, while its kernels were still being built."""


# Backends whose compile thread may still run. At interpreter exit their threads stop after the warm-up step
# they are in (a thread still inside inductor's C++ when the interpreter tears down aborts the process), and
# the exit waits for that step: the thread is not a daemon. threading's own pre-join hook runs this.
_COMPILING: weakref.WeakSet[TorchBackend] = weakref.WeakSet()


def _stop_background_compiles() -> None:
    for backend in list(_COMPILING):
        backend._closed = True


getattr(threading, "_register_atexit", lambda fn: None)(_stop_background_compiles)


def compiles_in_background(compile: str, device: str) -> bool:
    """Whether ``--compile`` builds the compiled kernels after the backend is ready (``auto`` on the CPU)
    rather than before (``on``) or never (``off``, ``auto`` elsewhere)."""
    return compile == "auto" and device == "cpu"


def kernels_name(decoder: Decoder) -> str:
    """Which code computes the numbers: ``fused-compiled``, ``fused-eager`` or ``transformers``. Scores are
    bit-identical run to run on one path, and differ by rounding between paths (a score cache keys on it)."""
    forward = getattr(decoder, "forward", None)
    if forward is None:
        return "transformers"
    return "fused-compiled" if getattr(forward, "compiled", False) else "fused-eager"


class TorchBackend:
    """Scores token groups with a Qwen3 causal LM loaded by transformers."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        yes_token_id: int,
        no_token_id: int,
        max_model_len: int,
        device: str = "auto",
        dtype: str = "auto",
        prefix_reuse: bool = True,
        chunk_tokens: int = 2048,
        compile: str = "auto",
        task: str = "rerank",
        compile_cache_dir: str | None = None,
        batch_invariant: str = "auto",
    ) -> None:
        import torch
        from transformers import AutoModel, AutoModelForCausalLM

        if compile_cache_dir:
            # Read by inductor when it first looks for a cached kernel or FX graph: set before any compiling.
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache_dir)

        self._torch = torch
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        if self.device == "cpu" and self.dtype == torch.bfloat16 and not cpu_has_fast_bf16():
            log.warning("bfloat16 on a CPU without AVX-512 BF16 or AMX is emulated: the model's bf16 linear layers "
                        "ran 3.3-4x slower than float32 on a Xeon without them "
                        "(bench/results/cpu_matmul_dtypes.json); --dtype auto picks float32 on this CPU")
        self.prefix_reuse = prefix_reuse
        self.chunk_tokens = chunk_tokens
        self.batch_invariant = resolve_batch_invariant(batch_invariant, self.device)
        load_kwargs: dict[str, Any] = dict(dtype=self.dtype, attn_implementation="sdpa", low_cpu_mem_usage=True)
        if task == "embed":
            # An embedder is the bare decoder, loaded as the model card loads it (AutoModel); its result is the last
            # token's final hidden state itself (see _scores), and no output layer is loaded.
            model = AutoModel.from_pretrained(str(model_path), **load_kwargs)
            model.eval()
            self.w_diff: Any = None
            self.body: Any = model.to(self.device)
        else:
            model = AutoModelForCausalLM.from_pretrained(str(model_path), **load_kwargs)
            model.eval()
            head = model.get_output_embeddings().weight
            # The one row of the output layer that matters: score = h · (w_yes − w_no).
            self.w_diff = (head[yes_token_id].float() - head[no_token_id].float()).to(self.device)
            self.body = model.model.to(self.device)  # the Qwen3Model whose weights every decoder runs
        self.task = task
        self.hidden_size = int(self.body.config.hidden_size)
        self._model: Any = model  # None once closed
        self.info = BackendInfo(
            name="torch", device=self.device, dtype=str(self.dtype).removeprefix("torch."),
            max_model_len=max_model_len,
        )
        # Held by the swap to the compiled decoder and by close, so a decoder built after close is never swapped in.
        self._swap_lock = threading.Lock()
        self._closed = False
        self.compile_done = threading.Event()  # set once the decoder is final (compiled, or the eager one kept)
        self.compile_thread: threading.Thread | None = None
        if compiles_in_background(compile, self.device):
            from rerankd.engine.backends.decoders import TransformersDecoder

            self.decoder: Decoder = TransformersDecoder(self.body)
            self.compile_thread = threading.Thread(target=self._compile_in_background, name="rerankd-compile")
            _COMPILING.add(self)
            self.compile_thread.start()
        else:
            self.decoder = choose_decoder(self.body, compile, self.device)
            self.decoder.warm_up(self._warm_up_run)
            self.compile_done.set()

    @property
    def kernels(self) -> str:
        """The decoder serving now (:func:`kernels_name`); changes once, when the compiled one is swapped in."""
        decoder = getattr(self, "decoder", None)
        return "closed" if decoder is None else kernels_name(decoder)

    @property
    def takes_concurrent_passes(self) -> bool:
        """Whether two passes may run at once (the batcher's bulk lane): on the CPU, where each thread has its own
        OpenMP team and the OS shares the cores by priority; on a GPU two passes would only double the memory."""
        return self.device == "cpu"

    @property
    def compiled_kernels_ready(self) -> bool:
        return self.kernels == "fused-compiled"

    def _compile_in_background(self) -> None:
        """Build and warm up the compiled decoder off the forward executor, then swap it in between passes.

        The warm-up's own forward passes (a few rows of a few tokens: compiling is their cost) run on this
        thread beside the serving passes; they read the same weights and write nothing shared.
        """
        try:
            self._build_and_swap()
        finally:
            self.compile_done.set()

    def _build_and_swap(self) -> None:
        from rerankd.engine.backends.decoders import FusedDecoder

        def run(decoder: Decoder, groups: list[TokenGroup], chunk_tokens: int | None = None) -> object:
            if self._closed:  # stop between two warm-up steps: each may compile for a while
                raise _CompileCancelled
            return self._warm_up_run(decoder, groups, chunk_tokens)

        started = time.perf_counter()
        try:
            decoder = choose_decoder(self.body, "auto", self.device)  # logs why when it cannot compile here
            if not isinstance(decoder, FusedDecoder):
                return
            decoder.warm_up(run)
        except _CompileCancelled:
            return
        except Exception as exc:  # a background failure must not take the server down: the eager path stays
            if not self._closed:
                log.warning("compiled kernels failed to build in the background (%s: %s): keeping transformers' "
                            "forward", type(exc).__name__, exc, exc_info=True)
            return
        with self._swap_lock:
            if self._closed:
                return
            self.decoder = decoder
        log.info("compiled kernels ready after %.1fs in the background: the fused forward serves from the next "
                 "forward pass", time.perf_counter() - started)

    def _warm_up_run(self, decoder: Decoder, groups: list[TokenGroup], chunk_tokens: int | None = None) -> object:
        """:class:`~rerankd.engine.backends.decoders.WarmUpRun`: this backend's loop, with a decoder and chunk
        width of the warm-up's choosing; the backend's own settings stay as they are."""
        return self._score(decoder, groups, self.chunk_tokens if chunk_tokens is None else chunk_tokens)

    def score(self, groups: list[TokenGroup]) -> list[list[float]]:
        """Raw scores (``logit_yes - logit_no``) for every tail, grouped as given."""
        # Read once: a swap during the pass changes the next pass's decoder, never this one's.
        return self._score(self.decoder, groups, self.chunk_tokens)

    def _score(self, decoder: Decoder, groups: list[TokenGroup], chunk_tokens: int) -> list[list[float]]:
        """The one scoring loop: plain rows, or shared prefixes once and tails after their gathered cache."""
        torch = self._torch
        with torch.inference_mode():
            reused = sum(len(g.shared) * (len(g.tails) - 1) for g in groups)
            if self.batch_invariant:
                flat = [s for g in groups for s in self._score_alone(decoder, g, chunk_tokens)]
            elif self.prefix_reuse and reused >= _MIN_REUSED_PREFIX_TOKENS:
                flat = self._score_with_shared_prefix(decoder, groups, chunk_tokens)
            else:
                ids, _, lengths = self._pad_right([g.shared + t for g in groups for t in g.tails])
                last, _ = self._forward(decoder, ids, lengths, chunk_tokens)
                flat = self._scores(last)
        return split_by_group(flat, groups)

    def _score_alone(self, decoder: Decoder, group: TokenGroup, chunk_tokens: int) -> list[float]:
        """Batch-invariant scoring: every prompt runs as a batch of one, after its group's prefix run alone.

        Why: a row's numbers depend on the shapes of the pass it is in. oneDNN picks its GEMM blocking by
        the whole matrix (rows × padded width), SDPA's CPU flash kernel its block sizes by the padded width,
        and a batch decides whether the shared-prefix path is taken at all; each moves bf16 scores by ~1e-2
        (``tests/unit/test_batch_invariance.py`` shows it). Run alone, the shapes are a function of the
        pair's own tokens, so its score is the same bits whatever else was waiting. The prefix still runs
        once per group and pass (alone too), and its cache is copied to each tail.
        """
        torch = self._torch
        if not (self.prefix_reuse and group.shared):
            scores = []
            for tail in group.tails:
                ids, _, lengths = self._pad_right([group.shared + tail])
                last, _ = self._forward(decoder, ids, lengths, chunk_tokens)
                scores.extend(self._scores(last))
            return scores
        prefix_ids, prefix_mask, prefix_lengths = self._pad_right([group.shared])
        _, cache = self._forward(decoder, prefix_ids, prefix_lengths, chunk_tokens, keep_cache=True)
        only = torch.zeros(1, dtype=torch.long, device=self.device)
        scores = []
        for tail in group.tails:
            tail_ids, _, tail_lengths = self._pad_right([tail])
            last, _ = self._forward(decoder, tail_ids, tail_lengths, chunk_tokens, past=decoder.copy_rows(cache, only),
                                    past_mask=prefix_mask, past_lengths=prefix_lengths)
            scores.extend(self._scores(last))
        return scores

    def _pad_right(self, rows: list[list[int]]) -> tuple[Any, Any, Any]:
        torch = self._torch
        lengths = torch.tensor([len(r) for r in rows], device=self.device)
        width = int(lengths.max())
        ids = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        ids = ids.to(self.device)
        mask = (torch.arange(width, device=self.device)[None, :] < lengths[:, None]).long()
        return ids, mask, lengths

    def _forward(
        self, decoder: Decoder, ids: Any, lengths: Any, chunk_tokens: int, *, past: KVCacheHandle | None = None,
        past_mask: Any = None, past_lengths: Any = None, keep_cache: bool = False,
    ) -> tuple[Any, KVCacheHandle | None]:
        """Run right-padded rows, in chunks of ``chunk_tokens`` columns, after an optional KV cache.

        Returns each row's hidden state at its last real token, and the cache when ``keep_cache``.
        Chunking bounds activation and attention memory, so one 32k-token document does not need a
        32k × 32k attention matrix at once; causal attention over the cache makes it exact.
        """
        torch = self._torch
        rows, width = ids.shape
        own_mask = (torch.arange(width, device=self.device)[None, :] < lengths[:, None]).long()
        base = past_lengths if past_lengths is not None else torch.zeros(rows, dtype=torch.long, device=self.device)
        last_index = lengths - 1
        last = None
        cache = past
        for start in range(0, width, chunk_tokens):
            end = min(width, start + chunk_tokens)
            positions = base[:, None] + torch.arange(start, end, device=self.device)[None, :]
            use_cache = keep_cache or end < width or cache is not None
            idx = ((last_index >= start) & (last_index < end)).nonzero(as_tuple=True)[0]  # rows ending here
            visible = self._cached_keys_visible(own_mask, past_mask, start) if cache is not None else None
            picked, cache = decoder.run_chunk(ids[:, start:end], positions, own_mask[:, start:end], cache=cache,
                                              cached_visible=visible, keep_cache=use_cache,
                                              select=(idx, last_index[idx] - start))
            if last is None:
                last = picked.new_zeros((rows, picked.shape[-1]))
            if idx.numel():
                last[idx] = picked
        return last, cache

    def _cached_keys_visible(self, own_mask: Any, past_mask: Any, start: int) -> Any:
        """(rows, cached positions) boolean: the shared prefix's real tokens (its padding hidden), then this
        row's earlier chunks."""
        torch = self._torch
        own = own_mask[:, :start].bool()
        return own if past_mask is None else torch.cat([past_mask.bool(), own], dim=1)

    def embed(self, groups: list[TokenGroup]) -> list[list[Any]]:
        """An embedder's results: every tail's final hidden state at its last token (float32 numpy rows, not
        normalised), grouped as given. The same loop as :meth:`score`; only the last step differs (_scores)."""
        if self.w_diff is not None:
            raise RuntimeError("this backend loaded a reranker (task rerank); it has no embeddings to give")
        return self.score(groups)

    def _scores(self, last: Any) -> list[Any]:
        """The last step of the loop: a reranker's ``h · (w_yes − w_no)``, or an embedder's ``h`` itself."""
        if self.w_diff is None:
            return list(last.float().cpu().numpy())
        return (last.float() @ self.w_diff).tolist()

    def _score_with_shared_prefix(self, decoder: Decoder, groups: list[TokenGroup], chunk_tokens: int) -> list[float]:
        """Run each group's shared prefix once, gather its KV cache per row, then run the tails."""
        torch = self._torch
        prefix_ids, prefix_mask, prefix_lengths = self._pad_right([g.shared for g in groups])
        _, cache = self._forward(decoder, prefix_ids, prefix_lengths, chunk_tokens, keep_cache=True)
        row_group = torch.tensor(
            [gi for gi, g in enumerate(groups) for _ in g.tails], dtype=torch.long, device=self.device
        )
        cache = decoder.gather_rows(cache, row_group)
        tail_ids, _, tail_lengths = self._pad_right([t for g in groups for t in g.tails])
        last, _ = self._forward(
            decoder, tail_ids, tail_lengths, chunk_tokens, past=cache, past_mask=prefix_mask[row_group],
            past_lengths=prefix_lengths[row_group],
        )
        return self._scores(last)

    def close(self) -> None:
        # Drop every reference to the weights (the decoder holds the body too) so their memory is freed. A
        # background compile still running finds the backend closed and drops its decoder instead of swapping.
        with self._swap_lock:
            self._closed = True
        vars(self).pop("decoder", None)
        self.body = None
        self._model = None
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()
