"""PromptBuilder: the model card's tokens, truncation of the document only, exact shared prefix."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from rerankd.engine.prompt import PREFIX, SUFFIX, PromptBuilder, common_prefix_length, format_pair
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
