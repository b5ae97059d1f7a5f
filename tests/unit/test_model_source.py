import json

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
