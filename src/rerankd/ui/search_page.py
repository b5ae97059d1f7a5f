"""The "Search" tab: a query over a pasted or uploaded corpus, two stages, both rankings shown.

Stage one embeds the query (as a query, with the instruction: docs/embeddings.md) and every passage (as a
document) at ``/v1/embeddings`` and keeps the ``top-k`` passages by cosine; stage two reranks those with
``/v1/rerank``. The table lists the reranked order with each passage's embedding rank and cosine beside its
rerank score, so the page shows what the reranker changed.

Why it is shaped this way: as the rank tab, the API keys live only in the clients captured by the handler's
closure; the handler is async with its own concurrency limit; the event is a named API endpoint
(``/search``) so the same search is scriptable with ``gradio_client``. Bad input (no query, an empty corpus,
more than ``--max-corpus`` passages, a file that cannot be read) and every upstream failure (the embedder
missing or refusing, the reranker refusing) end as one sentence in the page, never a traceback. The vectors
of the last corpora are kept (:class:`~rerankd.ui.search.CorpusVectors`): a second query over the same
corpus embeds only the query.
"""

from __future__ import annotations

from typing import Any, NoReturn

import gradio as gr

from rerankd.client import RerankAPIError, RerankClient, RerankOutcome
from rerankd.engine.embedding import DEFAULT_EMBED_INSTRUCTION
from rerankd.ui.documents import SUPPORTED_SUFFIXES, DocumentParseError, collect_documents
from rerankd.ui.embedder import EmbeddingClient, Embeddings
from rerankd.ui.failures import LastErrors, fail, wire_page_event
from rerankd.ui.search import (
    CorpusError,
    CorpusVectors,
    DenseHit,
    check_corpus,
    clamp_top_k,
    corpus_key,
    top_k_by_cosine,
)

__all__ = ["DEFAULT_TOP_K", "MAX_TOP_K", "SEARCH_API_DESCRIPTION", "SEARCH_API_NAME", "SEARCH_HEADERS",
           "search_tab"]

SEARCH_API_NAME = "search"
SEARCH_HEADERS = ["rank", "rerank score", "embedding rank", "cosine", "index", "passage"]
DEFAULT_TOP_K = 10
MAX_TOP_K = 100  # the reranker's request stays small: top-k is what a person reads, not the whole corpus
SEARCH_API_DESCRIPTION = (
    "Search a corpus in two stages: the embedding model keeps the top_k passages by cosine, the "
    "Qwen3-Reranker orders them. Inputs: query (str); instruction (str, for the query's embedding and the "
    "reranker; empty = each model's default); corpus (str, one passage per line); corpus_file (a .txt/.jsonl/"
    "/.csv file or None, appended after the pasted passages); top_k (int, 1 to 100). Returns: the table "
    "{headers: [rank, rerank score, embedding rank, cosine, index, passage], data: rows in reranked order}; "
    "a one-line Markdown summary; details JSON {corpus, top_k, embedding {model, dimensions, latency_ms, "
    "prompt_tokens, cached}, rerank {id, model, latency_ms, usage}}. Bad input and failures of either API "
    "are raised with a human-readable message."
)


def _rows(outcome: RerankOutcome, hits: list[DenseHit], passages: list[str]) -> list[list[Any]]:
    # The reranker saw the candidates in embedding order, so its index is the position in `hits`.
    return [[row.rank, round(row.score, 6), hits[row.index].rank, round(hits[row.index].cosine, 6),
             hits[row.index].index, passages[hits[row.index].index]] for row in outcome.results]


def _summary(k: int, corpus: int, query: Embeddings, embedding_ms: float, cached: bool, tokens: int,
             outcome: RerankOutcome) -> str:
    vectors = "corpus vectors reused" if cached else f"{tokens} embedding tokens"
    return (
        f"**top {k} of {corpus} passages** by `{query.model}` (cosine, {embedding_ms:.0f} ms, {vectors}), "
        f"reranked by `{outcome.model}` in **{outcome.latency_ms:.0f} ms** · {outcome.prompt_tokens} prompt "
        f"tokens · request `{outcome.request_id}`"
    )


def _make_search_handler(reranker: RerankClient, embedder: EmbeddingClient, errors: LastErrors,
                         max_corpus: int, vectors: CorpusVectors) -> Any:
    def stop(request: gr.Request | None, title: str, message: str, duration: float | None = 10) -> NoReturn:
        fail(errors, request, title, message, duration)

    async def search(
        query: str, instruction: str, corpus: str, corpus_file: str | None, top_k: float | None,
        request: gr.Request = None,  # type: ignore[assignment]  # injected by Gradio, not an API input
    ) -> tuple[list[list[Any]], str, dict[str, Any]]:
        """Search the corpus: the embedder's top_k passages by cosine, reranked by the Qwen3-Reranker.

        Args:
            query: the search query (required).
            instruction: the task instruction for the query's embedding and the reranker; empty = defaults.
            corpus: passages, one per line.
            corpus_file: optional .txt (one per line), .jsonl or .csv file; its passages follow the pasted ones.
            top_k: how many passages the embedder keeps for the reranker (1 to 100).

        Returns:
            the table: rank, rerank score, embedding rank, cosine, index (position in the corpus), passage.
            a one-line summary: passages, models, latencies, tokens, request id.
            details as JSON: corpus, top_k, embedding {...}, rerank {...}.
        """
        query = (query or "").strip()
        if not query:
            stop(request, "Nothing to search", "Type a query first.")
        try:
            passages = collect_documents(corpus, corpus_file)
            check_corpus(passages, max_corpus)
        except DocumentParseError as exc:
            stop(request, "Cannot read the corpus", str(exc))
        except CorpusError as exc:
            stop(request, "Cannot search this corpus", str(exc))
        k = clamp_top_k(top_k, len(passages), MAX_TOP_K)
        instruction = (instruction or "").strip()
        try:
            query_vector = await embedder.embed([query], query=True, instruction=instruction or None)
            key = corpus_key(query_vector.model, passages)
            corpus_vectors = vectors.get(key)
            cached, tokens, embedding_ms = corpus_vectors is not None, 0, query_vector.latency_ms
            if corpus_vectors is None:
                embedded = await embedder.embed(passages)
                corpus_vectors, tokens = embedded.vectors, embedded.prompt_tokens
                embedding_ms += embedded.latency_ms
                if corpus_vectors.shape[1] != query_vector.vectors.shape[1]:
                    stop(request, "Embedding failed", f"{embedder.url} gave the query {query_vector.vectors.shape[1]} "
                         f"dimensions and the passages {corpus_vectors.shape[1]}.")
                vectors.put(key, corpus_vectors)
        except RerankAPIError as exc:  # EmbeddingAPIError: the embedder's own sentence, naming its flags
            stop(request, exc.title, exc.message, duration=None)
        hits = top_k_by_cosine(query_vector.vectors[0], corpus_vectors, k)
        try:
            outcome = await reranker.rerank(query, [passages[h.index] for h in hits], instruction=instruction or None,
                                            return_documents=False)
        except RerankAPIError as exc:
            stop(request, exc.title, exc.message, duration=None)
        details = {
            "corpus": len(passages),
            "top_k": k,
            "embedding": {"model": query_vector.model, "dimensions": int(corpus_vectors.shape[1]),
                          "latency_ms": round(embedding_ms, 1), "prompt_tokens": query_vector.prompt_tokens + tokens,
                          "cached": cached},
            "rerank": {"id": outcome.request_id, "model": outcome.model, "latency_ms": round(outcome.latency_ms, 1),
                       "usage": {"prompt_tokens": outcome.prompt_tokens, "total_tokens": outcome.total_tokens}},
        }
        summary = _summary(k, len(passages), query_vector, embedding_ms, cached, tokens, outcome)
        return _rows(outcome, hits, passages), summary, details

    return search


def search_tab(reranker: RerankClient, embedder: EmbeddingClient, errors: LastErrors, *, max_corpus: int,
               max_concurrency: int) -> None:
    """Lay out the Search tab inside the caller's ``gr.Blocks`` and wire its ``/search`` event."""
    search = _make_search_handler(reranker, embedder, errors, max_corpus, CorpusVectors())
    with gr.Tab("Search a corpus", id="search", elem_id="rerankd-search-tab"):
        gr.Markdown(
            f"Paste a corpus (one passage per line) or upload a {'/'.join(SUPPORTED_SUFFIXES)} file, at most "
            f"{max_corpus} passages. The embedding model keeps the **top-k** passages by cosine similarity to the "
            "query; the reranker orders them. The table shows both: the rerank order, and each passage's "
            "embedding rank and cosine."
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=2):
                query = gr.Textbox(label="Query", lines=1, placeholder="What are you looking for?",
                                   elem_id="rerankd-search-query")
                instruction = gr.Textbox(label="Instruction", value=DEFAULT_EMBED_INSTRUCTION, lines=2,
                                         info="For the query's embedding (Instruct: …\\nQuery:) and the reranker; "
                                              "empty means each model's default.",
                                         elem_id="rerankd-search-instruction")
                corpus = gr.Textbox(label="Corpus (one passage per line)", lines=10, max_lines=30,
                                    placeholder="One passage per line", elem_id="rerankd-search-corpus")
                corpus_file = gr.File(label="…or upload a corpus (.txt one per line, .jsonl, .csv)",
                                      file_types=list(SUPPORTED_SUFFIXES), type="filepath", height=120,
                                      elem_id="rerankd-search-file")
                with gr.Row():
                    top_k = gr.Number(label=f"top-k to rerank (1-{MAX_TOP_K})", value=DEFAULT_TOP_K, minimum=1,
                                      maximum=MAX_TOP_K, precision=0, elem_id="rerankd-search-top-k")
                    button = gr.Button("Search", variant="primary", elem_id="rerankd-search-button")
            with gr.Column(scale=3):
                summary = gr.Markdown(label="Summary", elem_id="rerankd-search-summary")
                table = gr.Dataframe(headers=SEARCH_HEADERS,
                                     datatype=["number", "number", "number", "number", "number", "str"],
                                     label="Reranked top-k", interactive=False, wrap=True,
                                     column_widths=["7%", "11%", "11%", "10%", "8%", "53%"],
                                     elem_id="rerankd-search-table")
                with gr.Accordion("Response details", open=False):
                    details = gr.JSON(label="Response details", elem_id="rerankd-search-details")
        wire_page_event(errors, triggers=[button.click, query.submit], fn=search,
                        inputs=[query, instruction, corpus, corpus_file, top_k], table=table, summary=summary,
                        details=details, api_name=SEARCH_API_NAME, api_description=SEARCH_API_DESCRIPTION,
                        max_concurrency=max_concurrency)
