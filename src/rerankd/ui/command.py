"""``rerankd ui``: serve the Gradio page in front of a gateway (or a server).

Gradio is imported only when the command runs, so ``rerankd --help`` stays fast.

Why the command waits for SIGTERM/SIGINT itself instead of letting Gradio block: Gradio's loop only
catches ``KeyboardInterrupt``, and SIGTERM's default action does nothing to PID 1 in a container, so the
UI sat out the whole grace period until it was killed. Here both signals close the server and the
command returns (exit status 0) at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import click

from rerankd.client import rerank_url
from rerankd.options import env_option
from rerankd.ui.embedder import embeddings_url

__all__ = ["ui"]


def _check_gateway_url(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        rerank_url(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def _check_embedding_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value:
        try:
            embeddings_url(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value or None


@click.command()
@env_option("--gateway-url", default="http://127.0.0.1:8080", callback=_check_gateway_url,
            help="Base URL of the rerank API (gateway or server); /v1/rerank is appended.")
@env_option("--api-key", default=None, show_default=False,
            help="Key sent as `Authorization: Bearer` by the UI's server process; never shown in the page.")
@env_option("--host", default="127.0.0.1", help="Interface to listen on (0.0.0.0 for all).")
@env_option("--port", type=click.IntRange(0, 65535), default=7860)
@env_option("--root-path", default="",
            help="Public path prefix (e.g. /rerank-ui) or full URL when a reverse proxy serves the UI.")
@env_option("--timeout", type=click.FloatRange(min=0.1), default=60.0,
            help="Seconds to wait for the rerank API before telling the user it timed out.")
@env_option("--max-concurrency", type=click.IntRange(min=1), default=16,
            help="Rerank calls in flight at once; more wait in Gradio's queue.")
@env_option("--queue-size", type=click.IntRange(min=1), default=256,
            help="Rerank calls allowed to wait; past it the page says the queue is full.")
@env_option("--embedding-url", default=None, show_default=False, callback=_check_embedding_url,
            help="Base URL of the embedding API the search tab uses (/v1/embeddings is appended) "
                 "[default: --gateway-url].")
@env_option("--embedding-api-key", default=None, show_default=False,
            help="Key for --embedding-url, sent by the UI's server process only [default: --api-key].")
@env_option("--embedding-model-name", "embedding_model", default=None, show_default=False,
            help="The served name the search tab's embedding requests ask for (`model`) [default: none, "
                 "the upstream's default embedding model].")
@env_option("--max-corpus", type=click.IntRange(min=1), default=1000,
            help="Passages the search tab embeds at most per search; a larger corpus is refused with a message.")
def ui(gateway_url: str, api_key: str | None, host: str, port: int, root_path: str, timeout: float,
       max_concurrency: int, queue_size: int, embedding_url: str | None, embedding_api_key: str | None,
       embedding_model: str | None, max_corpus: int) -> None:
    """Serve a web page to try queries against the rerank API (Gradio)."""
    # No usage analytics or version checks to huggingface.co from a self-hosted service (unless asked for).
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        from rerankd.ui.app import build_ui, launch_ui
    except ImportError as exc:  # gradio is an optional extra
        raise click.ClickException(f"{exc}; install the UI extra: pip install 'rerankd[ui]'") from None

    blocks = build_ui(gateway_url, api_key=api_key, timeout=timeout, max_concurrency=max_concurrency,
                      max_queue=queue_size, embedding_url=embedding_url, embedding_api_key=embedding_api_key,
                      embedding_model=embedding_model, max_corpus=max_corpus)
    public = f"; public path {root_path}" if root_path else ""
    embedder = f"; embeddings from {embedding_url}" if embedding_url else ""
    click.echo(f"rerankd ui: listening on http://{host}:{port}/{public} → {gateway_url} "
               f"({'with' if api_key else 'without'} an API key){embedder}", err=True)
    signal_name = asyncio.run(_serve_until_stopped(blocks, launch_ui, host=host, port=port, root_path=root_path))
    click.echo(f"rerankd ui: {signal_name} received, stopped", err=True)


async def _serve_until_stopped(blocks: Any, launch: Any, **launch_args: Any) -> str:
    """Launch ``blocks`` without Gradio's blocking loop, wait for SIGTERM or SIGINT, close; the signal's name.

    The handlers go through the event loop's signal wake-up, so a signal delivered to any of Gradio's
    threads still wakes this one; they are installed before launching, so one sent during startup counts.
    """
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[str] = loop.create_future()
    signals = (signal.SIGTERM, signal.SIGINT)

    def stop(name: str) -> None:
        if not stopped.done():
            stopped.set_result(name)

    for sig in signals:
        loop.add_signal_handler(sig, stop, sig.name)
    try:
        launch(blocks, prevent_thread_lock=True, **launch_args)
        return await stopped
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        blocks.close(verbose=False)
