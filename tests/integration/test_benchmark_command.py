"""``rerankd bench`` against a real tiny-model server: both load modes run and the report has every field."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

from click.testing import CliRunner, Result

from rerankd.benchmark.command import bench
from rerankd.server.settings import ServerSettings
from support import running_server

HAS_PLOT = importlib.util.find_spec("matplotlib") is not None


def _run(args: list[str]) -> Result:
    result = CliRunner().invoke(bench, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_bench_closed_and_open_loop_report(server_url: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = _run(["--url", server_url, "--docs", "4,8", "--doc-tokens", "48-64", "--mode", "both",
                   "--concurrency", "2", "--qps", "4", "--duration", "1.0", "--variants", "2",
                   "--server-pid", str(os.getpid()), "--out", str(out), "--plot" if HAS_PLOT else "--no-plot"])
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert [(r["n_docs"], r["mode"]) for r in rows] == [(4, "closed"), (4, "open"), (8, "closed"), (8, "open")]
    for r in rows:
        assert r["errors"] == 0 and r["ok"] == r["requests"] > 0
        assert r["pairs_per_s"] == r["ok"] * r["n_docs"] / r["wall_s"]
        assert r["tokens_per_s"] > r["pairs_per_s"] * 48  # billed tokens include the prompt template
        assert 0 < r["latency_p50_s"] <= r["latency_p90_s"] <= r["latency_p99_s"] <= r["latency_max_s"]
        assert r["peak_rss_mib"] > 50  # this process hosts the server thread
    open_rows = [r for r in rows if r["mode"] == "open"]
    assert all(r["target_qps"] == 4.0 for r in open_rows)
    assert report["command"].startswith("rerankd bench --url ")
    assert report["server_info"]["model"]
    assert "| 4 docs × 48-64 tok | closed | C=2 |" in result.output
    if HAS_PLOT:
        assert out.with_suffix(".png").stat().st_size > 1000


def test_bench_sends_the_api_key_and_counts_rejections(tiny_model_dir: Path, tmp_path: Path) -> None:
    settings = ServerSettings(model=str(tiny_model_dir), device="cpu", dtype="float32", api_key="s3cret")
    with running_server(settings) as url:
        common = ["--url", url, "--docs", "2", "--doc-tokens", "32", "--concurrency", "1", "--duration", "0.5",
                  "--no-warmup", "--no-plot"]
        _run([*common, "--api-key", "s3cret", "--out", str(tmp_path / "ok.json")])
        ok = json.loads((tmp_path / "ok.json").read_text())
        assert ok["rows"][0]["errors"] == 0 and "s3cret" not in ok["command"]
        _run([*common, "--out", str(tmp_path / "no.json")])
        rejected = json.loads((tmp_path / "no.json").read_text())["rows"][0]
        assert rejected["ok"] == 0 and rejected["errors_by_status"] == {"401": rejected["requests"]}
        assert rejected["pairs_per_s"] == 0
