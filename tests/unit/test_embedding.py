"""The embedding recipe's pure parts: task detection, prompts, tokenization and truncation, Matryoshka sizes,
the output encodings (base64, Cohere's quantisations) and the dialects' mapping to one task."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from transformers import AutoTokenizer

from rerankd.devtools.random_model import END_OF_TEXT_ID, _write_embedding_files, qwen_tokenizer_dir
from rerankd.embedding_protocol import CohereEmbedRequest, OpenAIEmbeddingRequest, TEIEmbedRequest
from rerankd.engine.embedding import (
    DEFAULT_EMBED_INSTRUCTION,
    EmbeddingPromptBuilder,
    check_dimensions,
    detect_task,
    finish_vectors,
    format_query,
    model_prompts,
    quantize,
    to_base64,
)
from rerankd.errors import PayloadTooLargeError, UnprocessableError


def _write(root: Path, files: dict[str, object]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))
    return root


QWEN3_CONFIG = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_size": 1024}


def test_task_detection_reads_the_released_repositories_layout(tmp_path: Path) -> None:
    reranker = _write(tmp_path / "reranker", {"config.json": QWEN3_CONFIG})
    assert detect_task(reranker) == "rerank"  # the same config.json as an embedder's: no pooling files
    embedder = _write(tmp_path / "embedder", {"config.json": QWEN3_CONFIG, "modules.json": [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]})
    assert detect_task(embedder) == "embed"
    pooling_only = _write(tmp_path / "pooling", {"config.json": QWEN3_CONFIG,
                                                 "1_Pooling/config.json": {"pooling_mode_lasttoken": True}})
    assert detect_task(pooling_only) == "embed"
    bare = _write(tmp_path / "bare", {"config.json": {**QWEN3_CONFIG, "architectures": ["Qwen3Model"]}})
    assert detect_task(bare) == "embed"
    cross = _write(tmp_path / "cross", {"config.json": QWEN3_CONFIG, "1_Pooling/config.json": {},
                                        "config_sentence_transformers.json": {"model_type": "CrossEncoder"}})
    assert detect_task(cross) == "rerank"


def test_prompts_come_from_the_model_with_the_cards_defaults(tmp_path: Path) -> None:
    assert model_prompts(tmp_path) == {"query": format_query(""), "document": ""}
    _write(tmp_path, {"config_sentence_transformers.json": {"prompts": {"query": "Q: ", "code": "C: "}}})
    assert model_prompts(tmp_path) == {"query": "Q: ", "document": "", "code": "C: "}


def test_the_query_format_is_the_cards() -> None:
    assert format_query("What?") == f"Instruct: {DEFAULT_EMBED_INSTRUCTION}\nQuery:What?"
    assert format_query("x", "Find code") == "Instruct: Find code\nQuery:x"


@pytest.fixture(scope="module")
def embed_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> object:
    out = tmp_path_factory.mktemp("tok")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (out / name).write_bytes((qwen_tokenizer_dir() / name).read_bytes())
    _write_embedding_files(out, hidden_size=64)
    return AutoTokenizer.from_pretrained(out)


def test_the_builder_gives_what_the_tokenizer_call_of_the_card_gives(embed_tokenizer: object) -> None:
    tok: object = embed_tokenizer
    builder = EmbeddingPromptBuilder(tok, max_model_len=16)
    assert builder.end_ids == [END_OF_TEXT_ID] and builder.head_ids == []
    texts = ["hello world", "word " * 40, "", "如何实现Python中的异步爬虫"]
    group = builder.build(texts)
    expected = tok(texts, truncation=True, max_length=16)["input_ids"]  # type: ignore[operator]
    assert [group.shared + t for t in group.tails] == expected
    assert group.truncated == [False, True, False, False]
    assert group.tokens == [len(e) for e in expected]


def test_queries_share_their_instruction_prefix_and_keep_a_tail(embed_tokenizer: object) -> None:
    builder = EmbeddingPromptBuilder(embed_tokenizer, max_model_len=512)
    prefix = format_query("")
    group = builder.build(["a", "b c"], prefix=prefix)
    assert len(group.shared) >= 15 and all(group.tails)
    full = embed_tokenizer([prefix + "a", prefix + "b c"])["input_ids"]  # type: ignore[operator]
    assert [group.shared + t for t in group.tails] == full
    single = builder.build(["same"], prefix=prefix)
    assert len(single.tails[0]) >= 1


def test_left_truncation_keeps_the_tail_and_no_truncation_refuses(embed_tokenizer: object) -> None:
    builder = EmbeddingPromptBuilder(embed_tokenizer, max_model_len=8)
    words = " ".join(str(i) for i in range(40))
    ids = embed_tokenizer.encode(words, add_special_tokens=False)  # type: ignore[attr-defined]
    left = builder.build([words], direction="left")
    assert left.shared + left.tails[0] == [*ids[-7:], END_OF_TEXT_ID]
    right = builder.build([words])
    assert right.shared + right.tails[0] == [*ids[:7], END_OF_TEXT_ID]
    with pytest.raises(PayloadTooLargeError, match="model length 8"):
        builder.build(["ok", words], truncate=False)
    with pytest.raises(UnprocessableError, match="vocabulary"):
        builder.build([[1, -1]])


def test_a_tokenizer_that_adds_nothing_gets_end_of_text_appended() -> None:
    plain = AutoTokenizer.from_pretrained(qwen_tokenizer_dir())  # the base Qwen3 tokenizer: no post-processor
    builder = EmbeddingPromptBuilder(plain, max_model_len=32)
    assert builder.end_ids == [END_OF_TEXT_ID]
    group = builder.build(["hello"])
    assert group.tails[0][-1] == END_OF_TEXT_ID


def test_dimensions_range_is_32_to_the_model_size() -> None:
    assert check_dimensions(None, 1024) == 1024
    assert check_dimensions(32, 1024) == 32 and check_dimensions(1024, 1024) == 1024
    for bad in (31, 1025, 0, -5):
        with pytest.raises(UnprocessableError, match="32 to 1024"):
            check_dimensions(bad, 1024)


def test_matryoshka_truncates_then_renormalises() -> None:
    hidden = np.array([[3.0, 4.0, 12.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    full = finish_vectors(hidden)
    assert np.allclose(np.linalg.norm(full, axis=1), 1)
    cut = finish_vectors(hidden, 2)
    assert np.allclose(cut, [[0.6, 0.8], [1.0, 0.0]])
    assert np.allclose(finish_vectors(hidden, 2, normalize=False), hidden[:, :2])


def test_base64_is_little_endian_float32_bytes() -> None:
    v = np.array([[1.0, -2.5, 0.125]], dtype=np.float32)
    raw = base64.b64decode(to_base64(v)[0])
    assert raw == b"\x00\x00\x80\x3f" + b"\x00\x00\x20\xc0" + b"\x00\x00\x00\x3e"


def test_int8_and_uint8_scale_by_the_largest_magnitude() -> None:
    v = np.array([[0.5, -0.25, 0.0, -1.0 / 254]], dtype=np.float32)
    assert quantize(v, "int8") == [[127, -64, 0, -1]]
    assert quantize(v, "uint8") == [[255, 64, 128, 127]]
    assert quantize(np.array([[-0.8, 0.4]], dtype=np.float32), "int8") == [[-127, 64]]


def test_binary_packs_signs_high_bit_first() -> None:
    signs = [1, -1, -1, -1, -1, -1, -1, 1, -1, 1]  # 10 components: 2 bytes, the last padded with 0 bits
    v = np.array([signs], dtype=np.float32) * 0.1
    assert quantize(v, "ubinary") == [[0b10000001, 0b01000000]]
    assert quantize(v, "binary") == [[0b10000001 - 128, 0b01000000 - 128]]
    assert quantize(np.zeros((1, 8), dtype=np.float32), "ubinary") == [[0]]  # 0 is not > 0
    with pytest.raises(ValueError, match="unknown embedding type"):
        quantize(v, "int4")


def test_dialects_map_to_one_task() -> None:
    plain = OpenAIEmbeddingRequest(input="x").to_task()
    assert plain.inputs == ["x"] and not plain.is_query and plain.instruction is None
    ids = OpenAIEmbeddingRequest(input=[1, 2, 3]).to_task()
    assert ids.inputs == [[1, 2, 3]]
    query = OpenAIEmbeddingRequest(input=["a", "b"], input_type="search_query").to_task()
    assert query.is_query and query.instruction == DEFAULT_EMBED_INSTRUCTION
    jina = OpenAIEmbeddingRequest(input="a", task="text-matching").to_task()
    assert jina.is_query and jina.instruction == "Retrieve semantically similar text"
    assert not OpenAIEmbeddingRequest(input="a", task="retrieval.passage").to_task().is_query
    own = OpenAIEmbeddingRequest(input="a", input_type="document", instruction="Find code").to_task()
    assert own.is_query and own.instruction == "Find code"
    tei = TEIEmbedRequest(inputs=["a"], truncate=False, truncation_direction="Left", prompt_name="query").to_task()
    assert (tei.truncate, tei.truncation_direction, tei.prompt_name) == (False, "left", "query")
    cohere = CohereEmbedRequest(texts=["a"], input_type="clustering", output_dimension=256, truncate="START")
    task = cohere.to_task()
    assert task.is_query and task.dimensions == 256 and task.dimensions_field == "output_dimension"
    assert task.truncation_direction == "left" and cohere.embedding_types == ["float"]
    assert CohereEmbedRequest(texts=["a"]).to_task().is_query is False
    assert CohereEmbedRequest(texts=["a"], truncate="NONE").to_task().truncate is False
    for bad in ({"input": []}, {"input": [[1], []]}, {"input": "x", "input_type": "image"}, {"input": ["a", 1]}):
        with pytest.raises(ValidationError):
            OpenAIEmbeddingRequest(**bad)


def test_random_embedders_have_the_released_layout(embed_model_dir: Path) -> None:
    from safetensors import safe_open

    config = json.loads((embed_model_dir / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"] and config["hidden_size"] == 64
    with safe_open(embed_model_dir / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
    assert "embed_tokens.weight" in keys and not any(k.startswith(("model.", "lm_head")) for k in keys)
    pooling = json.loads((embed_model_dir / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_lasttoken"] and pooling["word_embedding_dimension"] == 64
    assert model_prompts(embed_model_dir)["query"] == format_query("")
    tokenizer = AutoTokenizer.from_pretrained(embed_model_dir, padding_side="left")
    # The released tokenizer's answer for these two texts (QwenLM/Qwen3-Embedding issue 122).
    assert tokenizer(["test", "test again"], padding=True)["input_ids"] == [[151643, 1944, 151643],
                                                                             [1944, 1549, 151643]]
    assert detect_task(embed_model_dir) == "embed"


def test_random_model_task_flag(tmp_path: Path) -> None:
    from rerankd.devtools.random_model import SHAPES, main, shape_task

    assert shape_task("embed-0.6b") == "embed" and shape_task("0.6b") == "rerank"
    assert shape_task("0.6b", "embed") == "embed"
    assert SHAPES["embed-0.6b"]["hidden_size"] == 1024 and SHAPES["embed-0.6b"]["num_hidden_layers"] == 28
    main(["--out", str(tmp_path / "m"), "--shape", "tiny", "--task", "embed"])
    assert detect_task(tmp_path / "m") == "embed"
