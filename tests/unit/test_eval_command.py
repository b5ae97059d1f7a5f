"""``rerankd eval`` refuses bad input with exit code 2 and a message naming the flag and file to fix."""

from __future__ import annotations

import shutil
from pathlib import Path

from click.testing import CliRunner, Result

from rerankd.cli import cli
from support import free_port

MINI = Path(__file__).resolve().parents[1] / "data" / "beir-mini"


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, ["eval", *args], env=env)


def test_eval_is_registered_with_its_flags() -> None:
    result = CliRunner().invoke(cli, ["eval", "--help"])
    assert result.exit_code == 0
    for flag in ("--dataset", "--reranker", "--api-key", "--top-k", "--k", "--split", "--instruction-sweep",
                 "--concurrency", "--output", "--per-query", "--resume / --no-resume", "--model", "--max-queries",
                 "--language", "RERANKD_TOP_K", "RERANKD_RESUME", "--first-stage", "--embedding-url",
                 "--embedding-api-key", "--embedding-model", "--embedding-instruction", "--embedding-dimensions",
                 "--embedding-batch-size", "--dense-index", "--rrf-k"):
        assert flag in result.output, flag
    assert "NO_RESUME" not in result.output  # a boolean flag pair reads one variable: RERANKD_RESUME=false


def test_bad_dataset_line_is_a_usage_error_naming_file_and_line(tmp_path: Path) -> None:
    shutil.copytree(MINI, tmp_path / "ds")
    with (tmp_path / "ds" / "queries.jsonl").open("a") as f:
        f.write("{oops\n")
    result = invoke("--dataset", str(tmp_path / "ds"), "--reranker", "http://127.0.0.1:9")
    assert result.exit_code == 2
    assert "Invalid value for '--dataset'" in result.output and "queries.jsonl:12: not valid JSON" in result.output


def test_missing_dataset_split_and_flags(tmp_path: Path) -> None:
    result = invoke("--dataset", str(tmp_path / "none"), "--reranker", "http://127.0.0.1:9")
    assert result.exit_code == 2 and "'--dataset'" in result.output and "does not exist" in result.output
    result = invoke("--dataset", str(MINI), "--reranker", "http://127.0.0.1:9", "--split", "train")
    assert result.exit_code == 2 and "splits present: dev, test" in result.output
    result = invoke("--dataset", str(MINI), "--reranker", "http://127.0.0.1:9", "--k", "1,ten")
    assert result.exit_code == 2 and "'--k'" in result.output and "comma-separated positive integers" in result.output
    result = invoke("--dataset", str(MINI), "--reranker", "http://127.0.0.1:9", "--k", "0")
    assert result.exit_code == 2 and "'--k'" in result.output
    result = invoke("--dataset", str(MINI), "--reranker", "localhost:8000")
    assert result.exit_code == 2 and "'--reranker'" in result.output and "not an http(s) URL" in result.output
    result = invoke("--dataset", str(MINI), "--reranker", "http://127.0.0.1:9", "--language", "xx")
    assert result.exit_code == 2 and "'--language'" in result.output
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    result = invoke("--dataset", str(MINI), "--reranker", "http://127.0.0.1:9", "--instruction-sweep", str(empty))
    assert result.exit_code == 2 and "no instruction in the file" in result.output


def test_flags_read_the_environment(tmp_path: Path) -> None:
    result = invoke(env={"RERANKD_DATASET": str(MINI), "RERANKD_RERANKER": "http://127.0.0.1:9", "RERANKD_K": "x"})
    assert result.exit_code == 2 and "'--k'" in result.output  # dataset and reranker came from the environment


def test_unreachable_reranker_fails_fast_naming_the_flag(tmp_path: Path) -> None:
    result = invoke("--dataset", str(MINI), "--reranker", f"http://127.0.0.1:{free_port()}",
                    "--checkpoint", str(tmp_path / "ck.jsonl"))
    assert result.exit_code == 1
    assert "could not reach the reranker" in result.output and "--reranker" in result.output


def test_dense_and_hybrid_need_an_embedding_url() -> None:
    for stage in ("dense", "hybrid"):
        result = invoke("--dataset", str(MINI), "--reranker", "http://127.0.0.1:9", "--first-stage", stage)
        assert result.exit_code == 2 and "'--first-stage'" in result.output and "--embedding-url" in result.output
    result = invoke("--dataset", str(MINI), "--reranker", "http://127.0.0.1:9", "--embedding-url", "localhost:8001")
    assert result.exit_code == 2 and "'--embedding-url'" in result.output and "not an http(s) URL" in result.output
    result = invoke("--dataset", str(MINI), "--reranker", "http://127.0.0.1:9", "--rrf-k", "-1")
    assert result.exit_code == 2 and "'--rrf-k'" in result.output
