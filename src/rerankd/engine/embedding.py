"""The Qwen3-Embedding recipe: which model is an embedder, its prompts, tokenization, pooling and output forms.

This is the part that must match the model card exactly. The card formats a query as
``Instruct: {task}\\nQuery:{query}`` and a document as itself, tokenizes with the model's own tokenizer
(whose post-processor appends ``<|endoftext|>``; ``truncation=True, max_length=N`` keeps the first N-1 text
tokens and then appends it), runs the decoder with left padding, takes the last token's final hidden state
and L2-normalises it. :class:`EmbeddingPromptBuilder` gives the token lists the card's tokenizer call gives;
the backend runs them right-padded and gathers each row's last real token, which is the same token at the
same relative positions (rotary attention sees only position differences), so the vectors are the card's.

Matryoshka ("flexible dimensions"): the first ``d`` components, re-normalised (:func:`finish_vectors`).
Output forms: float, base64 (little-endian float32, OpenAI's), and Cohere's int8 / uint8 / binary / ubinary
(:func:`quantize`).
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rerankd.engine.prompt import common_prefix_length
from rerankd.engine.text_cut import PrefixCutter, encode_prefixes
from rerankd.errors import PayloadTooLargeError, UnprocessableError

__all__ = [
    "DEFAULT_EMBED_INSTRUCTION",
    "EMBEDDING_TYPES",
    "MIN_DIMENSIONS",
    "TASKS",
    "EmbedGroup",
    "EmbeddingPromptBuilder",
    "EmbeddingType",
    "check_dimensions",
    "detect_task",
    "finish_vectors",
    "format_query",
    "model_prompts",
    "quantize",
    "to_base64",
]

log = logging.getLogger(__name__)

TASKS = ("rerank", "embed")
Task = Literal["rerank", "embed"]
# The card's default task for queries, and the prompt its config_sentence_transformers.json names "query".
DEFAULT_EMBED_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
_QUERY_FORMAT = "Instruct: {instruction}\nQuery:{query}"
# The card: "MRL Support ... custom dimensions", 32 to the model's size (its table lists 32-1024 for 0.6B).
MIN_DIMENSIONS = 32
END_OF_TEXT = "<|endoftext|>"

EmbeddingType = Literal["float", "int8", "uint8", "binary", "ubinary", "base64"]
EMBEDDING_TYPES: tuple[str, ...] = ("float", "int8", "uint8", "binary", "ubinary", "base64")


def format_query(query: str, instruction: str | None = None) -> str:
    """The card's ``get_detailed_instruct``: ``Instruct: {task}\\nQuery:{query}`` (no space after ``Query:``)."""
    return _QUERY_FORMAT.format(instruction=instruction or DEFAULT_EMBED_INSTRUCTION, query=query)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def detect_task(path: str | Path) -> Task:
    """``embed`` for a Qwen3-Embedding checkpoint, else ``rerank``, from the files the released repositories carry.

    Qwen3-Embedding and Qwen3-Reranker share ``config.json`` (both say ``Qwen3ForCausalLM``), so the tell is
    the sentence-transformers layout only the embedders have: a ``Pooling`` module in ``modules.json`` or a
    ``1_Pooling/config.json``. A ``config_sentence_transformers.json`` that says ``CrossEncoder`` is a reranker;
    an architecture that is a bare ``*Model`` (no head) is an embedder.
    """
    root = Path(path)
    st_config = _read_json(root / "config_sentence_transformers.json")
    if isinstance(st_config, dict) and str(st_config.get("model_type", "")).lower() == "crossencoder":
        return "rerank"
    modules = _read_json(root / "modules.json")
    if isinstance(modules, list) and any(
        isinstance(m, dict) and str(m.get("type", "")).endswith(".Pooling") for m in modules
    ):
        return "embed"
    if (root / "1_Pooling" / "config.json").is_file():
        return "embed"
    config = _read_json(root / "config.json")
    architectures = config.get("architectures") if isinstance(config, dict) else None
    if isinstance(architectures, list) and architectures and all(
        isinstance(a, str) and a.endswith("Model") for a in architectures
    ):
        return "embed"
    return "rerank"


def model_prompts(path: str | Path) -> dict[str, str]:
    """The model's named prompts (``config_sentence_transformers.json``'s ``prompts``), with the card's
    ``query`` and ``document`` prompts where the model names none."""
    prompts = {"query": format_query(""), "document": ""}
    st_config = _read_json(Path(path) / "config_sentence_transformers.json")
    own = st_config.get("prompts") if isinstance(st_config, dict) else None
    if isinstance(own, dict):
        prompts.update({str(k): v for k, v in own.items() if isinstance(v, str)})
    return prompts


@dataclass(frozen=True)
class EmbedGroup:
    """The token lists of one request's inputs, split into the tokens they all start with and each one's own tail.

    ``shared + tails[i]`` is exactly what the card's tokenizer call gives for input i.
    """

    shared: list[int]
    tails: list[list[int]]
    truncated: list[bool]

    @property
    def tokens(self) -> list[int]:
        """Tokens of each input (billed in full, as if nothing were shared)."""
        return [len(self.shared) + len(t) for t in self.tails]


class EmbeddingPromptBuilder:
    """Turns texts (or token ids) into the token lists the model card's tokenizer call makes."""

    def __init__(self, tokenizer: Any, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.vocab_size = len(tokenizer)
        # What the tokenizer itself adds around a text (the released Qwen3-Embedding tokenizer: <|endoftext|>
        # after it). A tokenizer that adds nothing (an older revision, a reranker's under --task embed) gets the
        # card's first recipe: <|endoftext|> appended by hand.
        plain = tokenizer.encode("a", add_special_tokens=False)
        special = tokenizer.encode("a", add_special_tokens=True)
        start = _find(special, plain)
        self.head_ids: list[int] = special[:start] if start >= 0 else []
        self.end_ids: list[int] = special[start + len(plain):] if start >= 0 else []
        if not self.head_ids and not self.end_ids:
            self.end_ids = [tokenizer.convert_tokens_to_ids(END_OF_TEXT)]
            log.info("the tokenizer adds no end-of-text token: appending %s as the model card's first recipe did",
                     END_OF_TEXT)
        self._cutter = PrefixCutter(tokenizer)  # cuts giant texts before tokenizing, keeping the kept tokens

    @property
    def text_budget(self) -> int:
        """Text tokens that fit once the tokenizer's own special tokens are placed."""
        return self.max_model_len - len(self.head_ids) - len(self.end_ids)

    def build(
        self,
        inputs: Sequence[str | Sequence[int]],
        *,
        prefix: str = "",
        truncate: bool = True,
        direction: Literal["right", "left"] = "right",
    ) -> EmbedGroup:
        """Tokenize ``prefix + text`` for each text (token-id inputs are taken as the text's tokens, the prefix's
        tokens before them) and cut each to the model length the way the tokenizer's truncation does.

        ``truncate=False``: an input longer than the model length raises :class:`PayloadTooLargeError`.
        """
        budget = self.text_budget
        texts = [i for i in inputs if isinstance(i, str)]
        if direction == "right" and truncate:
            caps, encoded_ids = encode_prefixes(self._cutter, self._tokenize, len, prefix, texts, budget + 1)
        else:
            caps, encoded_ids = [len(t) for t in texts], self._tokenize([prefix + t for t in texts])
        encoded = iter(encoded_ids)
        over = iter(len(t) > cap for t, cap in zip(texts, caps, strict=True))
        prefix_ids = self.tokenizer.encode(prefix, add_special_tokens=False) if prefix else []
        bodies: list[list[int]] = []
        truncated: list[bool] = []
        for item, text in zip(inputs, _texts_or_none(inputs), strict=True):
            if text is None:
                ids = prefix_ids + self._check_ids(item, len(bodies))
                over_chars = False
            else:
                ids = next(encoded)
                over_chars = next(over)
            too_long = len(ids) > budget
            if too_long and not truncate:
                raise PayloadTooLargeError(
                    f"input {len(bodies)} takes {len(ids) + len(self.head_ids) + len(self.end_ids)} tokens, more "
                    f"than the model length {self.max_model_len}; shorten it or allow truncation",
                    field=f"input[{len(bodies)}]")
            if too_long:
                ids = ids[:budget] if direction == "right" else ids[len(ids) - budget:]
            bodies.append(self.head_ids + ids + self.end_ids)
            truncated.append(too_long or over_chars)
        shared_len = common_prefix_length(bodies)
        # Every row keeps at least its last token in its tail: that is the token pooled.
        shared_len = min(shared_len, min((len(b) - 1 for b in bodies), default=0))
        return EmbedGroup(
            shared=bodies[0][:shared_len] if bodies else [],
            tails=[b[shared_len:] for b in bodies],
            truncated=truncated,
        )

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return [list(ids) for ids in
                self.tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]]

    def _check_ids(self, ids: Any, index: int) -> list[int]:
        out = list(ids)
        bad = next((t for t in out if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise UnprocessableError(
                f"input {index} holds token id {bad}, outside this model's vocabulary [0, {self.vocab_size})",
                field=f"input[{index}]")
        return out


def _texts_or_none(inputs: Sequence[str | Sequence[int]]) -> list[str | None]:
    return [i if isinstance(i, str) else None for i in inputs]


def _find(haystack: list[int], needle: list[int]) -> int:
    for i in range(len(haystack) - len(needle) + 1):
        if haystack[i : i + len(needle)] == needle:
            return i
    return -1


def check_dimensions(dimensions: int | None, model_dimensions: int, field: str = "dimensions") -> int:
    """The output size asked for, or the model's; outside [``MIN_DIMENSIONS``, model size] a 422 naming the range."""
    if dimensions is None:
        return model_dimensions
    if not MIN_DIMENSIONS <= dimensions <= model_dimensions:
        raise UnprocessableError(
            f"`{field}` is {dimensions}; this model gives {MIN_DIMENSIONS} to {model_dimensions} dimensions "
            "(Matryoshka: the first d components, re-normalised)", field=field)
    return dimensions


def finish_vectors(hidden: np.ndarray, dimensions: int | None = None, normalize: bool = True) -> np.ndarray:
    """(rows, hidden) last-token states → the first ``dimensions`` components of each, L2-normalised (float32)."""
    vectors = np.asarray(hidden, dtype=np.float32)
    if dimensions is not None:
        vectors = vectors[:, :dimensions]
    if not normalize:
        return np.ascontiguousarray(vectors)
    norms = np.linalg.norm(vectors.astype(np.float64), axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def to_base64(vectors: np.ndarray) -> list[str]:
    """Each vector as base64 of its little-endian float32 bytes (OpenAI's ``encoding_format: base64``)."""
    little = np.asarray(vectors, dtype="<f4")
    return [base64.b64encode(row.tobytes()).decode("ascii") for row in little]


def quantize(vectors: np.ndarray, kind: str) -> list[list[int]] | list[list[float]] | list[str]:
    """One of Cohere's ``embedding_types`` (or ``base64``) of unit vectors (rows).

    * ``float``: the components.
    * ``int8``: each component scaled by 127 / the vector's largest magnitude and rounded, in [-127, 127]
      (cosine similarity is kept; compare int8 vectors by cosine).
    * ``uint8``: the int8 value + 128, in [1, 255].
    * ``ubinary``: one bit per component, 1 where it is > 0, packed 8 to a byte, the first component in the
      high bit (``numpy.packbits``); ``ceil(d / 8)`` values in [0, 255].
    * ``binary``: the ubinary byte - 128, in [-128, 127] (Cohere's signed form).
    * ``base64``: see :func:`to_base64`.
    """
    v = np.asarray(vectors, dtype=np.float32)
    if kind == "float":
        return v.tolist()
    if kind == "base64":
        return to_base64(v)
    if kind in ("int8", "uint8"):
        scale = np.abs(v).max(axis=1, keepdims=True)
        q = np.rint(v / np.maximum(scale, 1e-12) * 127.0).astype(np.int32)
        return (q + 128 if kind == "uint8" else q).tolist()
    if kind in ("binary", "ubinary"):
        packed = np.packbits(v > 0, axis=1).astype(np.int32)
        return (packed - 128 if kind == "binary" else packed).tolist()
    raise ValueError(f"unknown embedding type {kind!r}; choose one of {', '.join(EMBEDDING_TYPES)}")
