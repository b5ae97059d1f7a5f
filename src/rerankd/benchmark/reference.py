"""Reference scorers run in-process on the same texts as rerankd: the baselines of every benchmark.

* :class:`CardRecipe` — the Qwen3-Reranker model card's transformers code (left padding, the full
  language-model head at every position, log-softmax over [no, yes]).
* :class:`CrossEncoderBaseline` — sentence-transformers ``CrossEncoder`` on the same weights converted
  to a one-logit ``Qwen3ForSequenceClassification`` whose score row is ``w_yes − w_no``
  (:func:`build_sequence_classifier`); its sigmoid equals the card's softmax.

Why here and not in ``bench/``: the load driver (``rerankd bench --baseline``) times them at run time,
and the offline scripts in ``bench/`` must time the very same baseline code. rerankd's own path without
HTTP and the agreement metrics are used by those scripts only: ``bench/benchlib``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rerankd.engine.prompt import DEFAULT_INSTRUCTION, PREFIX, SUFFIX, format_pair

__all__ = ["NO_ID", "YES_ID", "CardRecipe", "CrossEncoderBaseline", "build_sequence_classifier"]

YES_ID = 9693
NO_ID = 2152


def _torch_dtype(dtype: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


class CardRecipe:
    """The Qwen3-Reranker model card's reference code, verbatim in substance."""

    def __init__(self, model_dir: str | Path, dtype: str = "bfloat16", max_length: int = 8192,
                 attn_implementation: str | None = None) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
        kwargs: dict[str, Any] = {"dtype": _torch_dtype(dtype)}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs).eval()
        self.prefix_tokens = self.tokenizer.encode(PREFIX, add_special_tokens=False)
        self.suffix_tokens = self.tokenizer.encode(SUFFIX, add_special_tokens=False)
        self.token_true_id = self.tokenizer.convert_tokens_to_ids("yes")
        self.token_false_id = self.tokenizer.convert_tokens_to_ids("no")
        if (self.token_true_id, self.token_false_id) != (YES_ID, NO_ID):
            raise ValueError("not a Qwen3 tokenizer: yes/no token ids differ from the model card's")

    def process_inputs(self, pairs: list[str]) -> Any:
        inputs = self.tokenizer(
            pairs, padding=False, truncation="longest_first", return_attention_mask=False,
            max_length=self.max_length - len(self.prefix_tokens) - len(self.suffix_tokens),
        )
        for i, ele in enumerate(inputs["input_ids"]):
            inputs["input_ids"][i] = self.prefix_tokens + ele + self.suffix_tokens
        return self.tokenizer.pad(inputs, padding=True, return_tensors="pt", max_length=self.max_length)

    def compute_logits(self, inputs: Any) -> list[float]:
        import torch

        with torch.no_grad():
            batch_scores = self.model(**inputs).logits[:, -1, :]
            true_vector = batch_scores[:, self.token_true_id]
            false_vector = batch_scores[:, self.token_false_id]
            batch_scores = torch.stack([false_vector, true_vector], dim=1)
            batch_scores = torch.nn.functional.log_softmax(batch_scores, dim=1)
            return batch_scores[:, 1].exp().tolist()

    def score(self, query: str, docs: Sequence[str], batch: int = 8,
              instruction: str = DEFAULT_INSTRUCTION) -> list[float]:
        pairs = [format_pair(query, d, instruction) for d in docs]
        out: list[float] = []
        for i in range(0, len(pairs), batch):
            out.extend(self.compute_logits(self.process_inputs(pairs[i : i + batch])))
        return out

    def prompt_ids(self, query: str, docs: Sequence[str], instruction: str = DEFAULT_INSTRUCTION) -> list[list[int]]:
        """Each pair's token list as the card feeds it, padding removed."""
        pairs = [format_pair(query, d, instruction) for d in docs]
        pad = self.tokenizer.pad_token_id
        rows = []
        for ids in self.process_inputs(pairs)["input_ids"].tolist():
            i = 0
            while i < len(ids) and ids[i] == pad:
                i += 1
            rows.append(ids[i:])
        return rows

    def close(self) -> None:
        self.model = None


def build_sequence_classifier(causal_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a one-logit ``Qwen3ForSequenceClassification`` equal in score to the causal model.

    The body is copied; the classification row is ``w_yes − w_no`` in float32, so
    ``sigmoid(score) = softmax([no, yes])[yes]`` — the card's number, computed without the other
    151,667 rows. This is how the sentence-transformers ports of Qwen3-Reranker are built.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3ForSequenceClassification

    out = Path(out_dir)
    if (out / "config.json").exists():
        return out
    tokenizer = AutoTokenizer.from_pretrained(str(causal_dir))
    causal = AutoModelForCausalLM.from_pretrained(str(causal_dir), dtype=torch.float32)
    config = causal.config
    config.num_labels = 1
    config.pad_token_id = tokenizer.pad_token_id
    config.architectures = ["Qwen3ForSequenceClassification"]
    config.tie_word_embeddings = False
    classifier = Qwen3ForSequenceClassification(config).float()
    classifier.model.load_state_dict(causal.model.state_dict())
    head = causal.get_output_embeddings().weight
    with torch.no_grad():
        classifier.score.weight.copy_((head[YES_ID] - head[NO_ID])[None, :])
    out.mkdir(parents=True, exist_ok=True)
    classifier.save_pretrained(out, safe_serialization=True)
    # No chat template: sentence-transformers would otherwise render pairs as chat messages; without
    # one, a pair is tokenized as two plain texts back to back, the way the public seq-cls ports work.
    tokenizer.chat_template = None
    tokenizer.save_pretrained(out)
    for leftover in out.glob("chat_template*"):
        leftover.unlink()
    return out


class CrossEncoderBaseline:
    """sentence-transformers ``CrossEncoder`` on a :func:`build_sequence_classifier` directory.

    The pair is split at ``"\\n<Document>"``: the Qwen pre-tokenizer always breaks there, so the two
    halves tokenize to exactly the card's token list (checked by :meth:`prompt_ids`).
    """

    def __init__(self, classifier_dir: str | Path, dtype: str = "bfloat16", max_length: int = 8192) -> None:
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(str(classifier_dir), device="cpu", max_length=max_length,
                                  model_kwargs={"dtype": _torch_dtype(dtype)})

    @staticmethod
    def pair(query: str, doc: str, instruction: str = DEFAULT_INSTRUCTION) -> tuple[str, str]:
        return (f"{PREFIX}<Instruct>: {instruction}\n<Query>: {query}\n", f"<Document>: {doc}{SUFFIX}")

    def score(self, query: str, docs: Sequence[str], batch: int = 8,
              instruction: str = DEFAULT_INSTRUCTION) -> list[float]:
        pairs = [self.pair(query, d, instruction) for d in docs]
        return [float(s) for s in self.model.predict(pairs, batch_size=batch, show_progress_bar=False)]

    def prompt_ids(self, query: str, docs: Sequence[str], instruction: str = DEFAULT_INSTRUCTION) -> list[list[int]]:
        tok = self.model.tokenizer
        return [tok(*self.pair(query, d, instruction), add_special_tokens=True)["input_ids"] for d in docs]

    def close(self) -> None:
        self.model = None
