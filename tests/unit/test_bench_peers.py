"""bench/peers: a peer that is not set up says why; the shim serves the card's own scores; the table's arithmetic.

The peer table's rows are only as honest as these parts: a missing peer must become a row that says why (not a
timing), the shim must answer exactly what the card computes, and the ratios and agreement columns must compare
the right lists.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from types import ModuleType

import httpx
import pytest

PEERS = Path(__file__).resolve().parents[2] / "bench" / "peers"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_peers_{name}", PEERS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _load("run")


def _args(tmp_path: Path, model: str = "/nonexistent") -> argparse.Namespace:
    """run.py's options with an empty peers home and no vLLM environment."""
    return argparse.Namespace(peers_home=str(tmp_path), vllm_venv=str(tmp_path / "no-vllm"), model=model, threads=1,
                              vllm_memory_share=0.2, compile_cache_dir=str(tmp_path / "cc"))


def test_a_peer_not_set_up_says_why_and_names_the_setup_script(tmp_path: Path) -> None:
    args = _args(tmp_path)
    for name in ("openvino", "llama.cpp-f16", "llama.cpp-q8_0"):
        assert "bench/peers/setup.sh" in (run._peer(name, args, 0).why_not or "")
    assert "tests/vllm_cpu/run" in (run._peer("vllm", args, 0).why_not or "")
    assert run._peer("card", args, 0).why_not is None and run._peer("rerankd", args, 0).why_not is None


def test_a_failed_setup_step_is_the_reason_given(tmp_path: Path) -> None:
    (tmp_path / "status").write_text("venv\tok\nllama.cpp\tfailed: llama-server did not build (log: x)\n")
    why = run._peer("llama.cpp-q8_0", _args(tmp_path), 0).why_not or ""
    assert "failed: llama-server did not build" in why


def test_unknown_peer_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="choose from"):
        run._peer("tei", _args(tmp_path), 0)


def _row(times: list[float], scores: list[float] | None) -> dict[str, object]:
    return {"serves": "x", "command": [], "why_not": None, "times_s": times, "loadavg_at_runs": [[1.0, 1.0, 1.0]],
            "errors": [], "scores": scores, "prompt_tokens": 10}


def test_summary_ratios_to_rerankd_and_agreement_with_the_card() -> None:
    rows = {"card": _row([30.0, 50.0, 40.0], [0.9, 0.1, 0.5]),
            "slow": _row([200.0, 100.0], [0.4, 0.2, 0.6]),
            "rerankd": _row([20.0, 21.0, 19.0], [0.8, 0.2, 0.6]),
            "missing": {**_row([], None), "why_not": "not set up: run `bash bench/peers/setup.sh`"}}
    run._summary(rows)
    assert rows["card"]["median_s"] == 40.0 and rows["card"]["x_rerankd_time"] == 2.0
    assert rows["slow"]["median_s"] == 150.0 and rows["slow"]["x_rerankd_time"] == 7.5
    assert rows["rerankd"]["agreement_vs_card_fp32"]["max_abs_delta_p"] == pytest.approx(0.1)
    assert rows["rerankd"]["agreement_vs_card_fp32"]["ranking_identical"]
    assert not rows["slow"]["agreement_vs_card_fp32"]["ranking_identical"]
    assert rows["card"]["agreement_vs_card_fp32"] is None and rows["missing"]["median_s"] is None
    table = run._table(rows)
    assert "| missing | x | — not run: not set up" in table and "| card | x | 30.0, 50.0, 40.0 | 40.0 | 2.00 |" in table


def test_the_shim_serves_the_cards_scores_over_http(tiny_model_dir: Path, tmp_path: Path) -> None:
    from rerankd.benchmark.reference import CardRecipe

    args = _args(tmp_path, str(tiny_model_dir))
    port = run._free_port()
    peer = run._peer("card", args, port)
    query, docs = "what is solar power?", ["solar panels turn light into current", "a recipe for bread", "x"]
    with run._serving(peer, port, tmp_path / "card.log", 120.0) as (url, info):
        assert info["ready_s"] >= 0
        seconds, scores, tokens = run._rerank(url, peer, query, docs)
        bad = httpx.post(url + "/v1/rerank", json={"query": "q", "documents": [1, 2]})
        assert httpx.get(url + "/health").status_code == 200
    card = CardRecipe(tiny_model_dir, dtype="float32")
    assert scores == pytest.approx(card.score(query, docs), abs=1e-6)
    assert tokens == sum(len(ids) for ids in card.prompt_ids(query, docs)) and seconds > 0
    assert bad.status_code == 400 and "documents a list of strings" in bad.json()["error"]
