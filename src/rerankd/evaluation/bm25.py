"""The first stage: BM25 over the corpus with ``bm25s``, tokenized for the corpus's language.

Why our own tokenizer in front of ``bm25s``: ``bm25s.tokenize`` splits on ``\\w\\w+``, which turns a
Chinese sentence into one giant token. Chinese goes through ``jieba``; languages with a Snowball
stemmer get ``bm25s``'s own rules (lower case, ``\\w\\w+`` tokens, its stopword list, PyStemmer). With
``en`` this is exactly what MTEB's ``bm25s`` baseline does, which is the first stage of vLLM's
NFCorpus check.

Ranking is deterministic: BM25 score descending, ties broken by corpus order, and documents that
share no term with the query (score 0) are not candidates at all: their order would be arbitrary.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["LANGUAGES", "Bm25Index", "Tokenizer", "detect_language"]

# language code → (PyStemmer algorithm or None for jieba, name of the stopword tuple in bm25s.stopwords)
LANGUAGES: dict[str, tuple[str | None, str | None]] = {
    "en": ("english", "STOPWORDS_EN"),
    "zh": (None, "STOPWORDS_CHINESE"),
    "de": ("german", "STOPWORDS_GERMAN"),
    "fr": ("french", "STOPWORDS_FRENCH"),
    "es": ("spanish", "STOPWORDS_SPANISH"),
    "pt": ("portuguese", "STOPWORDS_PORTUGUESE"),
    "it": ("italian", "STOPWORDS_ITALIAN"),
    "nl": ("dutch", "STOPWORDS_DUTCH"),
    "ru": ("russian", "STOPWORDS_RUSSIAN"),
    "sv": ("swedish", "STOPWORDS_SWEDISH"),
    "no": ("norwegian", "STOPWORDS_NORWEGIAN"),
    "da": ("danish", "STOPWORDS_DANISH"),
    "tr": ("turkish", "STOPWORDS_TURKISH"),
    "fi": ("finnish", None),
}

_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # bm25s's default token pattern
_WORD_CHAR = re.compile(r"\w")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def detect_language(texts: Sequence[str], sample: int = 2000) -> str:
    """``zh`` when CJK ideographs make up at least 20% of the letters in a sample, else ``en``."""
    cjk = letters = 0
    for text in texts[:sample]:
        cjk += len(_CJK.findall(text))
        letters += sum(1 for ch in text if ch.isalpha())
    return "zh" if letters and cjk / letters >= 0.2 else "en"


class Tokenizer:
    """Text → BM25 terms for one language (see the module docstring for the rules)."""

    def __init__(self, language: str):
        if language not in LANGUAGES:
            raise ValueError(f"unsupported language {language!r}; choose from {', '.join(sorted(LANGUAGES))}")
        import bm25s.stopwords

        self.language = language
        algorithm, stopword_list = LANGUAGES[language]
        self.stopwords = frozenset(getattr(bm25s.stopwords, stopword_list)) if stopword_list else frozenset()
        self._stem_cache: dict[str, str] = {}
        if algorithm is None:
            import jieba

            jieba.setLogLevel(logging.WARNING)  # it logs its dictionary loading at INFO
            jieba.initialize()
            self._stemmer = None
            self._split = self._split_chinese
        else:
            import Stemmer

            self._stemmer = Stemmer.Stemmer(algorithm)
            self._split = self._split_words

    def __call__(self, text: str) -> list[str]:
        terms = [t for t in self._split(text.lower()) if t not in self.stopwords]
        if self._stemmer is None:
            return terms
        cache = self._stem_cache
        for t in terms:
            if t not in cache:
                cache[t] = self._stemmer.stemWord(t)
        return [cache[t] for t in terms]

    def tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        return [self(t) for t in texts]

    @staticmethod
    def _split_words(text: str) -> list[str]:
        return _TOKEN.findall(text)

    @staticmethod
    def _split_chinese(text: str) -> list[str]:
        import jieba

        # Search-engine mode also emits the shorter words inside long compounds, so "机器学习" in a query
        # matches "学习" in a document; tokens without a letter or digit (punctuation, spaces) are dropped.
        return [t.strip() for t in jieba.lcut_for_search(text) if _WORD_CHAR.search(t)]


@dataclass(frozen=True)
class Candidate:
    doc_index: int
    score: float


class Bm25Index:
    """A ``bm25s`` index (Lucene BM25, k1=1.5, b=0.75, the library's defaults) over one corpus."""

    def __init__(self, corpus_texts: Sequence[str], language: str, k1: float = 1.5, b: float = 0.75):
        import bm25s

        self.tokenizer = Tokenizer(language)
        self.num_docs = len(corpus_texts)
        self._retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
        self._retriever.index(self.tokenizer.tokenize(corpus_texts), show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """The BM25 score of every document for ``query`` (zeros when no query term is in the corpus)."""
        ids = self._retriever.get_tokens_ids(self.tokenizer(query))
        if not ids:
            return np.zeros(self.num_docs, dtype=np.float32)
        return np.asarray(self._retriever.get_scores_from_ids(ids))

    def search(self, query: str, k: int) -> list[Candidate]:
        """The top ``k`` documents with a positive score: score descending, then corpus order."""
        scores = self.scores(query)
        matching = np.flatnonzero(scores > 0)
        order = matching[np.lexsort((matching, -scores[matching]))][:k]
        return [Candidate(int(i), float(scores[i])) for i in order]
