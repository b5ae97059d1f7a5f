"""PromptBuilder: the model card's tokens, truncation of the document only, exact shared prefix."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from rerankd.engine.prompt import (
    BATCH_SLICE,
    PREFIX,
    SEQUENTIAL_TEXTS,
    SUFFIX,
    PromptBuilder,
    common_prefix_length,
    format_pair,
)
from rerankd.errors import QueryTooLongError


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def card_ids(tokenizer, query: str, doc: str, max_len: int, instruction: str | None = None) -> list[int]:
    prefix = tokenizer.encode(PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(SUFFIX, add_special_tokens=False)
    body = tokenizer(format_pair(query, doc, instruction), add_special_tokens=False, truncation=True,
                     max_length=max_len - len(prefix) - len(suffix))["input_ids"]
    return prefix + body + suffix


def test_prompts_equal_model_card_tokens(tokenizer) -> None:
    docs = ["Hello world", "  leading spaces", "中文文档", "x" * 3000, ""]
    group = PromptBuilder(tokenizer, 200).build("what?", docs)
    for doc, tail, cut in zip(docs, group.tails, group.truncated, strict=True):
        assert group.shared + tail == card_ids(tokenizer, "what?", doc, 200)
        assert cut == (doc == "x" * 3000)


def test_yes_no_token_ids_are_the_documented_ones(tokenizer) -> None:
    assert tokenizer.convert_tokens_to_ids("yes") == 9693
    assert tokenizer.convert_tokens_to_ids("no") == 2152


def test_max_tokens_per_doc_cuts_only_the_document(tokenizer) -> None:
    builder = PromptBuilder(tokenizer, 4096)
    full = builder.build("query", ["one two three four five six seven eight nine ten"])
    cut = builder.build("query", ["one two three four five six seven eight nine ten"], max_tokens_per_doc=3)
    suffix = builder.suffix_ids
    assert len(full.shared + full.tails[0]) - len(cut.shared + cut.tails[0]) == 7
    assert cut.tails[0][-len(suffix):] == suffix and cut.truncated == [True]
    assert tokenizer.decode((cut.shared + cut.tails[0])[: -len(suffix)]).endswith("one two three")


def test_query_too_long_is_an_error_not_a_cut(tokenizer) -> None:
    with pytest.raises(QueryTooLongError, match="query"):
        PromptBuilder(tokenizer, 128).build("word " * 200, ["doc"])


def test_shared_prefix_is_exact_token_prefix(tokenizer) -> None:
    group = PromptBuilder(tokenizer, 512).build("q", ["Alpha beta", "Alphabet", "zeta"])
    assert len(group.shared) >= len(tokenizer.encode(PREFIX, add_special_tokens=False))
    assert all(len(t) > 0 for t in group.tails)
    assert common_prefix_length([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_length([]) == 0


def test_huge_document_is_cut_before_tokenizing_with_same_tokens(tokenizer) -> None:
    builder = PromptBuilder(tokenizer, 128)
    huge = "lorem ipsum dolor sit amet " * 200_000  # 5.4 MB
    group = builder.build("q", [huge])
    assert group.shared + group.tails[0] == card_ids(tokenizer, "q", huge[:20_000], 128)
    assert group.truncated == [True]


class BatchCallLog:
    """The Rust tokenizer behind ``tokenizer``, recording the size of every batch call (its shared thread pool)."""

    def __init__(self, rust: object) -> None:
        object.__setattr__(self, "rust", rust)
        object.__setattr__(self, "batches", [])

    def encode_batch(self, inputs: list[str], *args: object, **kwargs: object) -> object:
        self.batches.append(len(inputs))
        return self.rust.encode_batch(inputs, *args, **kwargs)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.rust, name)

    def __setattr__(self, name: str, value: object) -> None:
        setattr(self.rust, name, value)


@pytest.fixture
def logged_tokenizer(tiny_model_dir: Path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer._tokenizer = BatchCallLog(tokenizer._tokenizer)
    return tokenizer


def test_a_few_documents_stay_out_of_the_tokenizer_pool_and_many_go_in_slices(logged_tokenizer) -> None:
    """A small request never queues in the pool behind a large one's batch; a large one is cut in slices."""
    log = logged_tokenizer._tokenizer
    builder = PromptBuilder(logged_tokenizer, 256)
    log.batches.clear()
    few = [f"document {i} with some words" for i in range(SEQUENTIAL_TEXTS)]
    group = builder.build("q", few, max_tokens_per_doc=3)
    assert log.batches == []
    many = [f"document {i} " + "lorem ipsum " * (i % 40) for i in range(2 * BATCH_SLICE + 7)]
    large = builder.build("q", many)
    assert log.batches == [BATCH_SLICE, BATCH_SLICE, 7]
    for doc, tail in zip(many, large.tails, strict=True):
        assert large.shared + tail == card_ids(logged_tokenizer, "q", doc, 256)
    cut = PromptBuilder(logged_tokenizer, 256).build("q", few, max_tokens_per_doc=3)
    assert (cut.shared, cut.tails, cut.truncated) == (group.shared, group.tails, group.truncated)


def test_one_by_one_tokens_equal_the_batch_calls_even_after_a_truncating_call(logged_tokenizer) -> None:
    """A truncation left configured on the Rust tokenizer by another caller sends a small request to the batch
    call (which resets it), so no document is cut short."""
    docs = ["Hello world", "  leading spaces", "中文文档", "x" * 3000, "", "<|im_end|> inside"]
    builder = PromptBuilder(logged_tokenizer, 200)
    log = logged_tokenizer._tokenizer
    log.batches.clear()
    one_by_one = builder.build("what?", docs)
    assert log.batches == []
    logged_tokenizer("a text long enough to be cut", truncation=True, max_length=3)
    assert log.truncation is not None
    log.batches.clear()
    batched = builder.build("what?", docs)
    assert log.batches == [1]  # the head through the batch call, which resets the truncation
    assert log.truncation is None
    assert (one_by_one.shared, one_by_one.tails, one_by_one.truncated) == (
        batched.shared, batched.tails, batched.truncated)
