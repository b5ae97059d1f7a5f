"""``rerankd serve``: one model behind the rerank APIs, in one process.

Its flags are :class:`~rerankd.server.settings.ServerSettings`' fields (``settings_options``): a new flag is a
new field there and nothing else. This module imports only click and the settings at load time, so
``rerankd serve --help`` starts in a fraction of a second; uvicorn, the app and torch are imported when
the command runs, after the allocator is chosen (it may re-execute the process before torch is loaded).

Exit status: 0 after a signal stopped it, 1 when the model failed to load (a supervisor restarts or
reports it instead of taking it for a clean stop), 2 for a bad flag or a model path it cannot use, 3 when
the socket could not be opened.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

import click
from pydantic import ValidationError

from rerankd.options import settings_options
from rerankd.server.settings import ServerSettings

__all__ = ["EXIT_BAD_MODEL_PATH", "EXIT_MODEL_LOAD_FAILED", "EXIT_NO_SOCKET", "serve"]

EXIT_MODEL_LOAD_FAILED = 1
EXIT_BAD_MODEL_PATH = 2  # click's status for a usage error too
EXIT_NO_SOCKET = 3  # uvicorn's own "startup failed" status


@click.command()
@settings_options(ServerSettings)
def serve(**flags: Any) -> None:
    """Serve one Qwen3-Reranker model over the rerank APIs."""
    from rerankd.allocator import AllocatorError, auto_applies, use_allocator
    from rerankd.observability.logging import configure_logging

    try:
        settings = ServerSettings(**flags)
    except ValidationError as exc:
        raise click.UsageError(str(exc)) from None
    configure_logging(settings.log_level, settings.log_format, settings.log_file)
    try:  # first, before torch is imported: it may re-execute this command under tcmalloc/jemalloc
        malloc_choice = settings.malloc
        if malloc_choice == "auto" and not auto_applies(settings.backend, settings.device):
            malloc_choice = "system"
        malloc = use_allocator(malloc_choice)
    except AllocatorError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)

    import uvicorn

    from rerankd.engine.model_source import ModelSourceError, resolve_model
    from rerankd.http.serving import uvicorn_config
    from rerankd.server.app import create_server_app

    try:
        path = resolve_model(settings.model, revision=settings.revision)
    except ModelSourceError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_BAD_MODEL_PATH)
    model_id = settings.model  # as given (a Hugging Face id or a path): /info's model_id
    settings = settings.model_copy(update={"served_model_name": settings.served_model_names, "model": str(path)})

    load_failures: list[str] = []

    def stop_serving(reason: str) -> None:  # the app's model cannot load: stop, and exit non-zero below
        load_failures.append(reason)
        server.should_exit = True

    from rerankd.observability import tracing

    if settings.otlp_endpoint:  # before the app is built: its middleware is chosen then
        try:
            tracing.configure_process(settings.otlp_endpoint, "rerankd-server", settings.port,
                                      {"rerankd.model": settings.model_name})
        except tracing.TracingUnavailableError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_BAD_MODEL_PATH)
    app = create_server_app(settings, on_load_failure=stop_serving, model_id=model_id)
    server = uvicorn.Server(uvicorn_config(app, host=settings.host, port=settings.port, limits=settings,
                                           log_level=settings.log_level, timeout_graceful_shutdown=30))
    click.echo(f"rerankd serve: model {settings.model_name} from {path}; listening on "
               f"http://{settings.host}:{settings.port} (ready when /ready answers 200); malloc: {malloc}", err=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn re-raises the SIGINT it drained for
        server.run()
    tracing.shutdown()  # the last requests' spans are sent before the process ends
    if load_failures:
        click.echo(f"error: {load_failures[0]}; exiting with status {EXIT_MODEL_LOAD_FAILED}", err=True)
        sys.exit(EXIT_MODEL_LOAD_FAILED)
    if not server.started:
        sys.exit(EXIT_NO_SOCKET)
