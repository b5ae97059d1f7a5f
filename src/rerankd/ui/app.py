"""The Gradio page: a query, an instruction, documents in; a ranked table, latency and token usage out.

Why it is shaped this way:

- The API key lives only in the :class:`~rerankd.client.RerankClient` captured by the handler's
  closure, on the server side. It is never a component value, a default, an example or a config entry,
  so it cannot reach the page's HTML, ``/config`` or the API description (the e2e tests check this).
- The handler is ``async`` and awaits the upstream with a timeout, and the event has its own
  concurrency limit: a slow gateway holds one of the limit's slots, not the process, and the page stays
  responsive for everyone else.
- The "Rank" event is a named API endpoint (``/rerank``), so the same ranking is scriptable with
  ``gradio_client`` (see docs/ui.md for its inputs and outputs); the Search tab
  (:mod:`rerankd.ui.search_page`) is ``/search``.
- The theme uses the system font stack: the page makes no request outside the UI's own origin, so it
  renders the same on an air-gapped network and behind a reverse proxy.
"""

from __future__ import annotations

from typing import Any, NoReturn

import gradio as gr

from rerankd.client import RerankAPIError, RerankClient, RerankOutcome
from rerankd.ui.documents import SUPPORTED_SUFFIXES, DocumentParseError, collect_documents
from rerankd.ui.failures import LastErrors, wire_page_event
from rerankd.ui.failures import fail as failed
from rerankd.ui.search_page import search_tab
from rerankd.ui.upstream import page_client, page_embedder

__all__ = [
    "API_DESCRIPTION",
    "API_NAME",
    "DEFAULT_INSTRUCTION",
    "EXAMPLES",
    "INSTRUCTION_PRESETS",
    "TABLE_HEADERS",
    "build_ui",
    "launch_ui",
    "score_bar",
]

API_NAME = "rerank"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
# (label shown in the dropdown, instruction sent to the model). Qwen3-Reranker is instruction-aware;
# its authors recommend English instructions even for other languages.
INSTRUCTION_PRESETS: list[tuple[str, str]] = [
    ("Web search (Qwen3 default)", DEFAULT_INSTRUCTION),
    ("Question answering", "Given a question, retrieve passages that contain the answer to the question"),
    ("Code search", "Given a programming question, retrieve code snippets and documentation that solve it"),
    ("Duplicate questions", "Given a question, retrieve questions that are semantically equivalent to it"),
    ("Product search", "Given a shopping query, retrieve product descriptions that match what the shopper wants"),
    ("Scientific claims", "Given a scientific claim, retrieve documents that support or refute the claim"),
]
TABLE_HEADERS = ["rank", "score", "score bar", "index", "document"]
# Shown in the page's "Use via API" panel and in /gradio_api/info (Gradio shows only the summary of a docstring).
API_DESCRIPTION = (
    "Rerank documents for a query with the Qwen3-Reranker. Inputs: query (str); instruction (str, empty = the "
    "model's default); documents (str, one per line); documents_file (a .txt/.jsonl/.csv file or None, appended "
    "after the pasted documents); top_n (int, 0 = all). Returns: the ranking table {headers: [rank, score, "
    "score bar, index, document], data: rows best first}; a one-line Markdown summary (latency, tokens); details "
    "JSON {id, model, latency_ms, documents, returned, usage}. Errors of the rerank API (401, 429 with "
    "Retry-After, 503, timeouts...) are raised with a human-readable message."
)
_BAR_WIDTH = 10

EXAMPLES: list[list[str]] = [
    [
        "如何实现Python中的异步爬虫",
        DEFAULT_INSTRUCTION,
        "使用 aiohttp 和 asyncio 可以实现高效的异步爬虫：用 async def 定义协程，通过 aiohttp.ClientSession "
        "并发发送请求，再用 asyncio.gather 同时等待多个页面的响应。\n"
        "requests 库是同步的 HTTP 客户端：每次 requests.get 都会阻塞到响应返回为止，适合编写简单的单线程爬虫，"
        "但并发抓取大量页面时很慢。\n"
        "西湖位于浙江省杭州市，是中国著名的风景名胜区，以断桥残雪、苏堤春晓等西湖十景闻名。",
    ],
    [
        "What is the capital of China?",
        DEFAULT_INSTRUCTION,
        "The capital of China is Beijing.\n"
        "Gravity is a force that attracts two bodies towards each other.\n"
        "Shanghai is the largest city in China by population.",
    ],
    [
        "read a file line by line in python",
        INSTRUCTION_PRESETS[2][1],
        "Iterate over the file object: `with open(path) as f: for line in f: print(line.rstrip())`.\n"
        "Python lists keep their insertion order and can be sorted in place with list.sort().\n"
        "pathlib.Path(path).read_text().splitlines() returns every line of a text file as a list.",
    ],
]

_CSS = """
#rerankd-summary { min-height: 2.5em; }
"""


def score_bar(score: float, width: int = _BAR_WIDTH) -> str:
    """A text bar for a score in [0, 1] (clamped), readable in the table and through ``gradio_client`` alike."""
    filled = round(min(1.0, max(0.0, score)) * width)
    return "█" * filled + "░" * (width - filled)


def _table_rows(outcome: RerankOutcome) -> list[list[Any]]:
    # Six decimals: the tiny and the real models both give scores that differ past the fourth.
    return [[r.rank, round(r.score, 6), score_bar(r.score), r.index, r.text] for r in outcome.results]


def _summary(outcome: RerankOutcome) -> str:
    return (
        f"**{len(outcome.results)} of {outcome.document_count} documents** ranked by `{outcome.model}` "
        f"in **{outcome.latency_ms:.0f} ms** · {outcome.prompt_tokens} prompt tokens, "
        f"{outcome.total_tokens} total · request `{outcome.request_id}`"
    )


def _details(outcome: RerankOutcome) -> dict[str, Any]:
    return {
        "id": outcome.request_id,
        "model": outcome.model,
        "latency_ms": round(outcome.latency_ms, 1),
        "documents": outcome.document_count,
        "returned": len(outcome.results),
        "usage": {"prompt_tokens": outcome.prompt_tokens, "total_tokens": outcome.total_tokens},
    }


def _make_rank_handler(client: RerankClient, errors: LastErrors) -> Any:
    def fail(request: gr.Request | None, title: str, message: str, duration: float | None = 10) -> NoReturn:
        failed(errors, request, title, message, duration)

    async def rank(
        query: str, instruction: str, documents: str, documents_file: str | None, top_n: float | None,
        request: gr.Request = None,  # type: ignore[assignment]  # injected by Gradio, not an API input
    ) -> tuple[list[list[Any]], str, dict[str, Any]]:
        """Rerank the documents for the query with the Qwen3-Reranker behind the UI; best first.

        Args:
            query: the search query (required).
            instruction: the task instruction; empty means the model's default.
            documents: candidate documents, one per line.
            documents_file: optional .txt (one per line), .jsonl or .csv file; its documents follow the pasted ones.
            top_n: return only the best N documents; 0 returns all.

        Returns:
            the ranking as a table with columns rank, score, score bar, index (position in the request), document.
            a one-line summary: documents ranked, model, latency in ms, prompt and total tokens, request id.
            the response details as JSON: id, model, latency_ms, documents, returned, usage.
        """
        query = (query or "").strip()
        if not query:
            fail(request, "Nothing to rank", "Type a query first.")
        try:
            texts = collect_documents(documents, documents_file)
        except DocumentParseError as exc:
            fail(request, "Cannot read the documents", str(exc))
        if not texts:
            fail(request, "Nothing to rank",
                 f"Add at least one document: one per line, or upload a {'/'.join(SUPPORTED_SUFFIXES)} file.")
        limit = int(top_n) if top_n and top_n > 0 else None
        try:
            outcome = await client.rerank(query, texts, instruction=(instruction or "").strip() or None, top_n=limit)
        except RerankAPIError as exc:
            # duration=None: the toast stays until dismissed, so a 429's wait hint is not missed.
            fail(request, exc.title, exc.message, duration=None)
        return _table_rows(outcome), _summary(outcome), _details(outcome)

    return rank


def build_ui(
    gateway_url: str,
    api_key: str | None = None,
    timeout: float = 60.0,
    *,
    max_concurrency: int = 16,
    max_queue: int = 256,
    title: str = "rerankd",
    embedding_url: str | None = None,
    embedding_api_key: str | None = None,
    embedding_model: str | None = None,
    max_corpus: int = 1000,
) -> gr.Blocks:
    """The page, wired to the rerank API at ``gateway_url`` (a gateway or a server; ``/v1/rerank`` is appended).

    ``api_key`` is sent as ``Authorization: Bearer`` from the UI's server process only. ``timeout`` bounds
    each upstream call; ``max_concurrency`` upstream calls run at once and ``max_queue`` more may wait.
    The search tab embeds at ``embedding_url`` (default: ``gateway_url``; ``/v1/embeddings``) with
    ``embedding_api_key`` (default: ``api_key``) and ``embedding_model`` (default: the upstream's), over a
    corpus of at most ``max_corpus`` passages.
    """
    client = page_client(gateway_url, api_key=api_key, timeout=timeout)
    embedder = page_embedder(embedding_url or gateway_url,
                             api_key=embedding_api_key if embedding_api_key is not None else api_key,
                             model=embedding_model, timeout=timeout)
    errors = LastErrors()
    rank = _make_rank_handler(client, errors)

    with gr.Blocks(title=title, analytics_enabled=False) as blocks:
        gr.Markdown(
            "# rerankd: try a ranking\n"
            "Type a query and candidate documents (one per line, or upload a .txt/.jsonl/.csv file); the "
            "Qwen3-Reranker scores each document against the query and the table shows them best first."
        )
        with gr.Tabs():
            with gr.Tab("Rank documents", id="rank", elem_id="rerankd-rank-tab"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2):
                        query = gr.Textbox(label="Query", lines=1, placeholder="What are you looking for?",
                                           elem_id="rerankd-query")
                        preset = gr.Dropdown(choices=INSTRUCTION_PRESETS, value=DEFAULT_INSTRUCTION,
                                             label="Instruction preset", elem_id="rerankd-preset")
                        instruction = gr.Textbox(label="Instruction", value=DEFAULT_INSTRUCTION, lines=2,
                                                 info="Edit freely; empty means the model's default.",
                                                 elem_id="rerankd-instruction")
                        documents = gr.Textbox(label="Documents (one per line)", lines=8, max_lines=30,
                                               placeholder="One candidate document per line",
                                               elem_id="rerankd-documents")
                        documents_file = gr.File(label="…or upload documents (.txt one per line, .jsonl, .csv)",
                                                 file_types=list(SUPPORTED_SUFFIXES), type="filepath", height=120,
                                                 elem_id="rerankd-file")
                        with gr.Row():
                            top_n = gr.Number(label="top_n (0 = all)", value=0, minimum=0, precision=0,
                                              elem_id="rerankd-top-n")
                            rank_button = gr.Button("Rank", variant="primary", elem_id="rerankd-rank")
                    with gr.Column(scale=3):
                        summary = gr.Markdown(label="Summary", elem_id="rerankd-summary")
                        table = gr.Dataframe(headers=TABLE_HEADERS,
                                             datatype=["number", "number", "str", "number", "str"], label="Ranking",
                                             interactive=False, wrap=True,
                                             column_widths=["8%", "12%", "15%", "9%", "56%"], elem_id="rerankd-table")
                        with gr.Accordion("Response details", open=False):
                            details = gr.JSON(label="Response details", elem_id="rerankd-details")
                gr.Examples(examples=EXAMPLES, inputs=[query, instruction, documents], label="Examples",
                            cache_examples=False)

                preset.change(lambda value: value, inputs=preset, outputs=instruction, queue=False,
                              api_visibility="private")
                wire_page_event(errors, triggers=[rank_button.click, query.submit], fn=rank,
                                inputs=[query, instruction, documents, documents_file, top_n], table=table,
                                summary=summary, details=details, api_name=API_NAME,
                                api_description=API_DESCRIPTION, max_concurrency=max_concurrency)
            search_tab(client, embedder, errors, max_corpus=max_corpus, max_concurrency=max_concurrency)
    blocks.queue(max_size=max_queue, default_concurrency_limit=max_concurrency)
    return blocks


def launch_ui(
    blocks: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    root_path: str | None = None,
    prevent_thread_lock: bool = False,
    max_file_size: str = "20mb",
) -> str:
    """Serve ``blocks`` with the options the CLI and the tests share; return the local URL.

    ``root_path`` is the public path prefix (or full URL) when a reverse proxy serves the UI under a
    sub-path, so the page's links and API calls go through the proxy.
    """
    theme = gr.themes.Default(
        font=["system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"],
    )
    _, local_url, _ = blocks.launch(
        server_name=host,
        server_port=port,
        root_path=root_path or None,
        prevent_thread_lock=prevent_thread_lock,
        share=False,
        inbrowser=False,
        quiet=True,
        ssr_mode=False,
        mcp_server=False,
        max_file_size=max_file_size,
        footer_links=["api"],
        theme=theme,
        css=_CSS,
    )
    return local_url
