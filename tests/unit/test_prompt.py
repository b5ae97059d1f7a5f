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
    PromptGroup,
    common_prefix_length,
    format_pair,
)
from rerankd.errors import BadRequestError, QueryTooLongError, UnprocessableError


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


# ---------------------------------------------------------------- long documents: head cut, prompt cap, chunks

LONG_DOC = " ".join(f"word{i}" for i in range(400))  # ~1200 tokens


def joint_tokens(tokenizer, query: str, doc: str) -> tuple[list[int], int]:
    """The pair string's tokens as the card tokenizes it, and how many lead tokens hold no document character."""
    head_chars = len(format_pair(query, "", None))
    enc = tokenizer(format_pair(query, doc), add_special_tokens=False, return_offsets_mapping=True)
    head = next(i for i, (_, end) in enumerate(enc["offset_mapping"]) if end > head_chars)
    return enc["input_ids"], head


def test_left_truncation_keeps_the_head_and_the_documents_last_tokens(tokenizer) -> None:
    builder = PromptBuilder(tokenizer, 128)
    group = builder.build("what?", [LONG_DOC, "short"], direction="left")
    ids, h = joint_tokens(tokenizer, "what?", LONG_DOC)
    keep = builder.pair_budget - h
    prefix, suffix = builder.prefix_ids, builder.suffix_ids
    assert group.shared + group.tails[0] == prefix + ids[:h] + ids[len(ids) - keep:] + suffix
    assert len(group.shared + group.tails[0]) == 128
    assert group.truncated == [True, False]
    # a document that fits is not touched: the same tokens as the card's
    assert group.shared + group.tails[1] == card_ids(tokenizer, "what?", "short", 128)
    text = tokenizer.decode(group.shared + group.tails[0])
    assert "<Query>: what?\n<Document>:" in text and text.endswith("word399" + SUFFIX)


def test_left_truncation_with_max_tokens_per_doc(tokenizer) -> None:
    builder = PromptBuilder(tokenizer, 4096)
    group = builder.build("q", [LONG_DOC], max_tokens_per_doc=5, direction="left")
    ids, h = joint_tokens(tokenizer, "q", LONG_DOC)
    assert group.shared + group.tails[0] == builder.prefix_ids + ids[:h] + ids[-5:] + builder.suffix_ids


def test_left_truncation_of_a_huge_document_cuts_characters_from_its_start(tokenizer) -> None:
    builder = PromptBuilder(tokenizer, 128)
    huge = "lorem ipsum dolor sit amet " * 200_000 + "the end"
    group = builder.build("q", [huge], direction="left")
    ids, h = joint_tokens(tokenizer, "q", huge[-20_000:])
    keep = builder.pair_budget - h
    assert group.shared + group.tails[0] == builder.prefix_ids + ids[:h] + ids[len(ids) - keep:] + builder.suffix_ids
    assert tokenizer.decode(group.shared + group.tails[0]).endswith("amet the end" + SUFFIX)


def test_max_prompt_tokens_cuts_the_whole_prompt_to_that_length_as_the_card_does(tokenizer) -> None:
    builder = PromptBuilder(tokenizer, 4096)
    group = builder.build("what?", [LONG_DOC, "short"], max_prompt_tokens=100)
    assert group.shared + group.tails[0] == card_ids(tokenizer, "what?", LONG_DOC, 100)
    assert len(group.shared + group.tails[0]) == 100
    assert group.shared + group.tails[1] == card_ids(tokenizer, "what?", "short", 4096)
    assert group.truncated == [True, False]
    both = builder.build("what?", [LONG_DOC], max_tokens_per_doc=10, max_prompt_tokens=100)
    assert both.tails == builder.build("what?", [LONG_DOC], max_tokens_per_doc=10).tails  # the tighter cap wins


def test_max_prompt_tokens_too_small_for_the_query_or_above_the_model_length(tokenizer) -> None:
    builder = PromptBuilder(tokenizer, 256)
    with pytest.raises(QueryTooLongError, match="truncate_prompt_tokens") as small:
        builder.build("what is the capital of France?", ["doc"], max_prompt_tokens=60)
    assert small.value.field == "truncate_prompt_tokens" and small.value.status_code == 400
    with pytest.raises(BadRequestError, match="more than the model length 256") as large:
        builder.build("q", ["doc"], max_prompt_tokens=257)
    assert large.value.field == "truncate_prompt_tokens"


def chunk_ids(builder: PromptBuilder, ids: list[int], h: int, size: int, step: int) -> list[list[int]]:
    """Every window of the document's tokens, as a whole prompt (the test's own arithmetic)."""
    doc = ids[h:]
    out, start = [], 0
    while True:
        out.append(builder.prefix_ids + ids[:h] + doc[start:start + size] + builder.suffix_ids)
        if start + size >= len(doc):
            return out
        start += step


def test_chunks_are_token_windows_with_the_same_head_and_chunk_0_is_the_truncation(tokenizer) -> None:
    builder = PromptBuilder(tokenizer, 4096)
    group = builder.build("what?", [LONG_DOC, "short"], max_tokens_per_doc=100, max_chunks=100, chunk_overlap=10)
    ids, h = joint_tokens(tokenizer, "what?", LONG_DOC)
    expected = chunk_ids(builder, ids, h, 100, 90)
    assert group.chunks == [len(expected), 1] and len(expected) == 1 + -(-(len(ids) - h - 100) // 90)
    rows = [group.shared + t for t in group.tails]
    assert rows[:-1] == expected
    assert rows[-1] == card_ids(tokenizer, "what?", "short", 4096)
    truncation = builder.build("what?", [LONG_DOC], max_tokens_per_doc=100)
    assert rows[0] == truncation.shared + truncation.tails[0]  # chunk 0 is what truncation keeps
    assert expected[1][len(builder.prefix_ids) + h:][:10] == ids[h + 90:h + 100]  # 10 tokens of overlap
    assert group.truncated == [False, False]
    # every prompt shares the template and the head: the batcher reuses it for every chunk
    assert len(group.shared) >= len(builder.prefix_ids) + h
    assert group.document_tokens() == [sum(len(r) for r in expected), len(rows[-1])]
    assert group.prompt_tokens == sum(group.document_tokens())


def test_chunks_without_overlap_cover_the_document_once(tokenizer) -> None:
    builder = PromptBuilder(tokenizer, 256)
    group = builder.build("q", [LONG_DOC], max_chunks=1000)
    ids, h = joint_tokens(tokenizer, "q", LONG_DOC)
    size = builder.pair_budget - h  # no max_tokens_per_doc: what the model length leaves after the head
    windows = [t[len(ids[:h]) - (len(group.shared) - len(builder.prefix_ids)):][: -len(builder.suffix_ids)]
               for t in group.tails]
    assert [w for window in windows for w in window] == ids[h:]
    assert all(len(w) == size for w in windows[:-1]) and 0 < len(windows[-1]) <= size
    assert all(len(group.shared) + len(t) <= 256 for t in group.tails)


def test_chunks_past_max_chunks_are_dropped_and_reported_as_truncated(tokenizer) -> None:
    builder = PromptBuilder(tokenizer, 4096)
    capped = builder.build("q", [LONG_DOC], max_tokens_per_doc=50, max_chunks=3)
    full = builder.build("q", [LONG_DOC], max_tokens_per_doc=50, max_chunks=1000)
    assert capped.chunks == [3] and capped.truncated == [True]
    assert full.truncated == [False] and full.chunks is not None and full.chunks[0] > 3
    assert [capped.shared + t for t in capped.tails] == [full.shared + t for t in full.tails[:3]]
    one = builder.build("q", [LONG_DOC], max_tokens_per_doc=50, max_chunks=1)
    truncated = builder.build("q", [LONG_DOC], max_tokens_per_doc=50)
    assert one.shared + one.tails[0] == truncated.shared + truncated.tails[0] and one.truncated == [True]


def test_chunk_overlap_must_be_below_the_chunk_length(tokenizer) -> None:
    builder = PromptBuilder(tokenizer, 4096)
    with pytest.raises(UnprocessableError, match="chunk_overlap_tokens") as err:
        builder.build("q", ["short"], max_tokens_per_doc=20, max_chunks=3, chunk_overlap=20)
    assert err.value.field == "chunk_overlap_tokens" and err.value.status_code == 422
    builder.build("q", [LONG_DOC], max_tokens_per_doc=20, max_chunks=3, chunk_overlap=19)


def test_best_chunk_is_the_max_and_the_first_of_equals() -> None:
    group = PromptGroup(shared=[1], tails=[[2], [3], [4], [5], [6], [7]], truncated=[False] * 3, chunks=[3, 1, 2])
    assert group.best_chunks([0.1, 0.5, 0.5, -2.0, 1.0, 3.0]) == ([0.5, -2.0, 3.0], [1, 0, 1])
    assert group.document_tokens() == [6, 2, 4]
    plain = PromptGroup(shared=[1], tails=[[2], [3]], truncated=[False, False])
    assert plain.best_chunks([0.3, 0.2]) == ([0.3, 0.2], None)


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
