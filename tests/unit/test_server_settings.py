"""`rerankd serve`'s settings: one typed object whose fields are the flags, their defaults, ranges and choices."""

from __future__ import annotations

import subprocess
import sys
import tokenize
from pathlib import Path
from typing import Any, get_args

import click
import pytest
from pydantic import ValidationError

from rerankd.deployment.up import REPLICA_SETTINGS, up
from rerankd.engine.config import EngineConfig
from rerankd.options import settings_argv
from rerankd.server.command import serve
from rerankd.server.settings import ServerSettings

SRC = Path(__file__).resolve().parents[2] / "src" / "rerankd"


@pytest.fixture(autouse=True)
def _no_rerankd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parse as if no RERANKD_* variable were set, whatever the test runner's environment holds."""
    for name in ServerSettings.model_fields:
        monkeypatch.delenv("RERANKD_" + name.upper(), raising=False)


def parse(argv: list[str], command: click.Command = serve) -> dict[str, Any]:
    return command.make_context(command.name or "serve", argv).params


def test_defaults() -> None:
    settings = ServerSettings(model="org/name")
    assert (settings.backend, settings.device, settings.dtype, settings.compile, settings.malloc) == ("auto",) * 5
    assert (settings.max_batch_tokens, settings.max_queue, settings.max_documents) == (16384, 256, 1000)
    assert (settings.max_model_len, settings.gpu_memory_utilization, settings.api_key) == (None, None, None)
    assert (settings.host, settings.port, settings.body_timeout) == ("127.0.0.1", 8000, 30.0)
    assert settings.max_body_bytes == 32 * 1024 * 1024 and settings.prefix_reuse is True
    assert (settings.log_level, settings.log_format, settings.model_name) == ("info", "auto", "name")


def test_the_flags_are_the_fields_with_their_defaults_and_choices() -> None:
    """Each default, range and choice list is written once, in the model: the flags read them from it."""
    params = {p.name: p for p in serve.params if p.name != "help"}
    assert list(params) == list(ServerSettings.model_fields)
    for name, field in ServerSettings.model_fields.items():
        param = params[name]
        assert isinstance(param, click.Option) and param.envvar == "RERANKD_" + name.upper(), name
        if field.is_required():
            assert param.required, name
            continue
        assert param.default == field.default, name
        assert param.help == field.description, name
    for name in ("backend", "device", "dtype", "compile", "malloc", "log_level", "log_format"):
        assert isinstance(params[name].type, click.Choice)
        assert tuple(params[name].type.choices) == get_args(ServerSettings.model_fields[name].annotation), name
    assert ServerSettings(**parse(["--model", "m"])) == ServerSettings(model="m")


def test_each_serve_default_is_written_once_in_src() -> None:
    """The command, the app, the engine and `up` take the numbers from the settings, never restate them."""
    readers = [SRC / "cli.py", SRC / "server" / "command.py", SRC / "server" / "app.py", SRC / "engine" / "engine.py",
               SRC / "deployment" / "up.py", SRC / "options.py"]
    defaults = {f.default for f in ServerSettings.model_fields.values()
                if isinstance(f.default, int) and not isinstance(f.default, bool) and f.default >= 100}
    assert {16384, 256, 1000, 8000} <= defaults
    for path in readers:
        with path.open("rb") as source:
            numbers = {int(t.string) for t in tokenize.tokenize(source.readline)
                       if t.type == tokenize.NUMBER and t.string.isdigit()}
        assert not numbers & defaults, f"{path.name} restates the defaults {sorted(numbers & defaults)}"
    settings = (SRC / "server" / "settings.py").read_text() + (SRC / "engine" / "config.py").read_text()
    assert settings.count("16384") == 1 and settings.count("256") == 1


def test_environment_is_read_and_flags_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RERANKD_MAX_QUEUE", "7")
    monkeypatch.setenv("RERANKD_PREFIX_REUSE", "false")
    monkeypatch.setenv("RERANKD_BACKEND", "torch")
    from_env = ServerSettings(**parse(["--model", "m"]))
    assert (from_env.max_queue, from_env.prefix_reuse, from_env.backend) == (7, False, "torch")
    from_flags = ServerSettings(**parse(["--model", "m", "--max-queue", "9", "--prefix-reuse", "--backend", "vllm"]))
    assert (from_flags.max_queue, from_flags.prefix_reuse, from_flags.backend) == (9, True, "vllm")


@pytest.mark.parametrize("argv", [
    ["--max-model-len", "15"], ["--max-batch-tokens", "63"], ["--max-queue", "0"], ["--max-documents", "0"],
    ["--max-body-bytes", "1023"], ["--body-timeout", "0.05"], ["--port", "65536"],
    ["--gpu-memory-utilization", "1.0"], ["--backend", "tpu"], ["--dtype", "int8"], ["--compile", "yes"],
    ["--malloc", "mimalloc"], ["--log-level", "trace"],
])
def test_out_of_range_flags_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(click.BadParameter):
        parse(["--model", "m", *argv])


@pytest.mark.parametrize("bad", [
    {"max_model_len": 15}, {"max_batch_tokens": 63}, {"max_queue": 0}, {"port": -1}, {"backend": "tpu"},
    {"gpu_memory_utilization": 0.01}, {"max_batch_token": 1024},  # a typo is an error, not a silent default
])
def test_settings_built_in_code_are_checked_the_same_way(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ServerSettings(model="m", **bad)
    assert ServerSettings(model="m", max_model_len=16, max_batch_tokens=64, max_queue=1).max_queue == 1


def test_the_engine_gets_exactly_its_part() -> None:
    settings = ServerSettings(model="/models/x", max_batch_tokens=512, compile="off", api_key="s3cret", port=9)
    config = settings.engine_config()
    assert type(config) is EngineConfig
    assert config.model_dump() == settings.model_dump(include=set(EngineConfig.model_fields))
    assert not hasattr(config, "api_key")


def test_up_forwards_the_replica_flags_with_serves_defaults() -> None:
    up_params = {p.name: p for p in up.params}
    for name in REPLICA_SETTINGS:
        assert up_params[name].default == ServerSettings.model_fields[name].default, name
    assert set(EngineConfig.model_fields) - {"model"} <= set(REPLICA_SETTINGS)
    replica = ServerSettings(model="m", max_batch_tokens=512, prefix_reuse=False, compile="off", dtype="float32",
                             gpu_memory_utilization=0.5)
    argv = settings_argv(replica, REPLICA_SETTINGS)
    assert "--max-queue" not in argv and "--backend" not in argv  # defaults are left to the replica
    assert ServerSettings(**parse(["--model", "m", *argv])) == replica
    assert settings_argv(ServerSettings(model="m"), REPLICA_SETTINGS) == []


def test_serve_help_imports_neither_torch_nor_the_app() -> None:
    """`rerankd serve --help` reads the settings model only: the engine, uvicorn and torch load when it runs."""
    probe = ("import sys\nfrom rerankd.cli import main\nsys.argv = ['rerankd', 'serve', '--help']\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'uvicorn', 'fastapi', 'rerankd.server.app',"
             " 'rerankd.engine.engine') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert "--max-batch-tokens" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_served_model_name_repeats_and_the_first_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = ServerSettings(**parse(["--model", "org/Qwen3-Reranker-4B", "--served-model-name", "rerank-v3.5",
                                    "--served-model-name", "qwen3-4b", "--strict-model-names"]))
    assert flags.served_model_names == ("rerank-v3.5", "qwen3-4b") and flags.model_name == "rerank-v3.5"
    assert flags.strict_model_names is True
    default = ServerSettings(**parse(["--model", "org/Qwen3-Reranker-4B"]))
    assert default.served_model_names == ("Qwen3-Reranker-4B",) and default.strict_model_names is False
    assert ServerSettings(model="m", served_model_name="one").served_model_names == ("one",)  # code's old spelling
    monkeypatch.setenv("RERANKD_SERVED_MODEL_NAME", "a b")
    monkeypatch.setenv("RERANKD_STRICT_MODEL_NAMES", "true")
    from_env = ServerSettings(**parse(["--model", "m"]))
    assert (from_env.served_model_names, from_env.strict_model_names) == (("a", "b"), True)


def test_up_hands_every_served_name_to_the_replicas() -> None:
    replica = ServerSettings(model="m", served_model_name=("x", "y"))
    assert settings_argv(replica, ["served_model_name"]) == ["--served-model-name", "x", "--served-model-name", "y"]
    params = parse(["--model", "m", "--served-model-name", "x", "--served-model-name", "y"], up)
    assert params["served_model_name"] == ("x", "y")
