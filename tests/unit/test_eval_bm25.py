"""BM25 first stage: bm25s's ranking against a straightforward BM25 written in the test, and tokenization."""

from __future__ import annotations

from pathlib import Path

import pytest

from eval_reference import bm25_top_k
from rerankd.evaluation.beir import load_beir
from rerankd.evaluation.bm25 import Bm25Index, Tokenizer, detect_language

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.mark.parametrize(("dataset", "language"), [("beir-mini", "en"), ("beir-mini-zh", "zh")])
@pytest.mark.parametrize("k", [3, 100])
def test_ranking_matches_a_reference_bm25(dataset: str, language: str, k: int) -> None:
    ds = load_beir(DATA / dataset)
    index = Bm25Index(ds.corpus_texts, language)
    corpus_tokens = Tokenizer(language).tokenize(ds.corpus_texts)
    queries = [*ds.queries.values(), "a query with a term in no document: zyzzyva"]
    nonempty = 0
    for query in queries:
        expected = bm25_top_k(corpus_tokens, Tokenizer(language)(query), k)
        got = index.search(query, k)
        assert [c.doc_index for c in got] == [i for i, _ in expected], query
        assert [c.score for c in got] == pytest.approx([s for _, s in expected], rel=1e-5), query
        nonempty += bool(got)
    assert nonempty >= len(ds.queries)  # every judged query finds something: the check is not vacuous


def test_documents_sharing_no_term_are_not_candidates() -> None:
    index = Bm25Index(["the cat sat", "dogs run fast", "a cat and a dog", "nothing here"], "en")
    assert [c.doc_index for c in index.search("cat dog", 10)] == [2, 0, 1]  # "dogs" stems to "dog"
    assert index.search("zebra", 10) == []
    assert index.search("the of and", 10) == []  # only stopwords


def test_ties_keep_corpus_order() -> None:
    index = Bm25Index(["apple pie", "banana", "apple pie", "apple pie"], "en")
    hits = index.search("apple", 10)
    assert [c.doc_index for c in hits] == [0, 2, 3] and len({c.score for c in hits}) == 1


def test_english_tokenizer_lowercases_drops_stopwords_and_stems() -> None:
    assert Tokenizer("en")("The Running dogs are running to the parks!") == ["run", "dog", "run", "park"]


def test_chinese_tokenizer_segments_words_and_drops_punctuation_and_stopwords() -> None:
    terms = Tokenizer("zh")("机器学习是人工智能的一个分支。")
    assert {"机器", "学习", "人工智能"} <= set(terms)
    assert "。" not in terms and "的" not in terms and "是" not in terms
    assert Tokenizer("zh")("Python 异步爬虫")[:1] == ["python"]  # Latin words inside Chinese text, lower-cased


def test_chinese_bm25_finds_the_right_document() -> None:
    ds = load_beir(DATA / "beir-mini-zh")
    index = Bm25Index(ds.corpus_texts, "zh")
    top = {q: ds.corpus_ids[index.search(text, 1)[0].doc_index] for q, text in ds.queries.items()}
    assert top == {"zq1": "z1", "zq2": "z4", "zq3": "z6", "zq4": "z10"}
    # The same Chinese text through the English tokenizer is one token per run of characters: no match.
    assert Bm25Index(ds.corpus_texts, "en").search("什么是机器学习", 1) == []


def test_detect_language() -> None:
    assert detect_language(load_beir(DATA / "beir-mini-zh").corpus_texts) == "zh"
    assert detect_language(load_beir(DATA / "beir-mini").corpus_texts) == "en"
    assert detect_language(["An English text that mentions 北京 once."]) == "en"
    assert detect_language([]) == "en"


def test_unsupported_language() -> None:
    with pytest.raises(ValueError, match="unsupported language 'xx'"):
        Tokenizer("xx")
