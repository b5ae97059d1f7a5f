import asyncio
import json
import os

import pytest

from rerankd.engine.model_source import ModelSourceError, model_max_length, resolve_model


def _model_dir(tmp_path, config=None):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config if config is not None else {"model_type": "qwen3"}))
    return d


def test_local_dir_with_config_resolves(tmp_path):
    d = _model_dir(tmp_path)
    assert resolve_model(str(d)) == d


def test_local_dir_without_config_errors(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    with pytest.raises(ModelSourceError) as err:
        resolve_model(str(d))
    assert "config.json" in str(err.value)
    assert "--model PATH" in str(err.value)


def test_missing_path_errors(tmp_path):
    with pytest.raises(ModelSourceError, match="--model PATH"):
        resolve_model(str(tmp_path / "nope"))


def test_hf_id_offline_errors_with_hint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads HF_HUB_OFFLINE at import; patch the constant too in case it is imported.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(ModelSourceError) as err:
        resolve_model("Qwen/Qwen3-Reranker-0.6B", cache_dir=str(tmp_path / "hf" / "hub"))
    msg = str(err.value)
    assert "Qwen/Qwen3-Reranker-0.6B" in msg
    assert "--model PATH" in msg


def test_model_max_length_caps(tmp_path):
    d = _model_dir(tmp_path, {"max_position_embeddings": 40960})
    assert model_max_length(d) == 32768


def test_model_max_length_reads_smaller(tmp_path):
    d = _model_dir(tmp_path, {"max_position_embeddings": 8192})
    assert model_max_length(d) == 8192
    assert model_max_length(d, cap=4096) == 4096


def test_model_max_length_default_when_absent(tmp_path):
    d = _model_dir(tmp_path, {})
    assert model_max_length(d) == 32768


# ------------------------------------------------------------------ --revision
# A Hugging Face cache as huggingface_hub writes it (models--org--name/refs/<ref> holds a commit sha, the files
# live in snapshots/<sha>/), so the revision is followed through the real snapshot_download, offline.
MAIN_SHA = "a" * 40
PINNED_SHA = "b" * 40


def _hub_cache(tmp_path):
    repo = tmp_path / "hub" / "models--org--reranker"
    for ref, sha in (("main", MAIN_SHA), ("v2", PINNED_SHA)):
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(sha)
        snapshot = repo / "snapshots" / sha
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text(json.dumps({"model_type": "qwen3", "ref": ref}))
    return tmp_path / "hub"


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)


def test_a_hub_id_loads_the_revision_asked_for(tmp_path, offline):
    cache = str(_hub_cache(tmp_path))
    assert resolve_model("org/reranker", cache_dir=cache).name == MAIN_SHA
    assert resolve_model("org/reranker", revision="v2", cache_dir=cache).name == PINNED_SHA
    assert resolve_model("org/reranker", revision=PINNED_SHA, cache_dir=cache).name == PINNED_SHA
    with pytest.raises(ModelSourceError, match="could not download model 'org/reranker'"):
        resolve_model("org/reranker", revision="v3", cache_dir=cache)  # not cached, and offline


def test_a_local_directory_ignores_the_revision(tmp_path):
    d = _model_dir(tmp_path)
    assert resolve_model(str(d), revision="v2") == d


def test_the_revision_flag_reaches_the_engine_and_the_model_loader(tmp_path, offline, monkeypatch):
    """`--revision` is a serve flag, an engine setting, and what load_engine resolves the Hub id with."""
    import huggingface_hub.constants
    from click.testing import CliRunner

    from rerankd.engine.engine import load_engine
    from rerankd.server.command import serve
    from rerankd.server.settings import ServerSettings

    settings = ServerSettings(model="org/reranker", revision="v2")
    assert settings.engine_config().revision == "v2"
    assert "--revision" in CliRunner().invoke(serve, ["--help"]).output
    # The main branch's snapshot is not a model; v2's is the tiny reranker: only the revision loads.
    cache = _hub_cache(tmp_path)
    tiny = os.environ.get("RERANKD_TEST_MODEL_DIR", "/work/models/tiny")
    if not os.path.isdir(tiny):
        pytest.skip("the tiny model is not built (RERANKD_TEST_MODEL_DIR)")
    snapshot = cache / "models--org--reranker" / "snapshots" / PINNED_SHA
    (snapshot / "config.json").unlink()
    for name in os.listdir(tiny):  # as the cache holds them: links to the files
        (snapshot / name).symlink_to(os.path.join(tiny, name))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    engine = load_engine(settings.model_copy(update={"compile": "off", "device": "cpu"}).engine_config())
    try:
        assert engine.info.name  # loaded
    finally:
        asyncio.run(engine.close())
    with pytest.raises(OSError):  # main's snapshot holds no weights
        load_engine(ServerSettings(model="org/reranker", compile="off", device="cpu").engine_config())
