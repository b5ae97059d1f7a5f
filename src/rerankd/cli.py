"""The one entry point: ``rerankd <command>``.

Every flag also reads ``RERANKD_<FLAG>`` from the environment (``--max-model-len`` ↔
``RERANKD_MAX_MODEL_LEN``), as DESIGN.md promises; flags win over the environment.
"""

from __future__ import annotations

import importlib
import importlib.util

import click

from rerankd import __version__

__all__ = ["main"]


# Every command lives in its room's module, imported only when invoked: `rerankd serve --help` must not
# pay for importing Gradio (or torch), and each room of the product owns its command next to its code.
LAZY_COMMANDS: dict[str, str] = {
    "serve": "rerankd.server.command:serve",
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


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
