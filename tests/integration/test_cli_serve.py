"""`rerankd serve` as users run it: a real process, flags from RERANKD_* env vars, clear startup logs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from support import free_port, spawn_replica


def test_serve_reads_env_vars_logs_startup_and_serves(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    env = dict(os.environ, RERANKD_MODEL=str(tiny_model_dir), RERANKD_PORT=str(port), RERANKD_DEVICE="cpu",
               RERANKD_SERVED_MODEL_NAME="env-named", RERANKD_LOG_FORMAT="json")
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rerankd.cli", "serve"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, log_path.read_text()
            time.sleep(0.2)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/rerank", json={"query": "q", "documents": ["a", "b"]})
        assert r.status_code == 200 and r.json()["model"] == "env-named"
        # --malloc auto: the same process (PID) re-executed itself with tcmalloc preloaded (.ci/run installs it).
        assert "libtcmalloc" in Path(f"/proc/{proc.pid}/maps").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log_path.read_text()
    assert f"http://127.0.0.1:{port}" in text
    assert "model loaded" in text
    assert "malloc: tcmalloc" in text


def test_serve_malloc_system_does_not_reexec_and_malloc_tcmalloc_does(tiny_model_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    probe = ("import sys; from rerankd.cli import main; sys.argv = ['rerankd', 'serve', '--malloc', sys.argv[1], "
             "'--model', '/nonexistent/model-dir']; main()")
    # The model path is bad on purpose: serve exits 2 right after choosing the allocator, which it logs.
    system = subprocess.run([sys.executable, "-c", probe, "system"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert system.returncode == 2 and "re-executing" not in system.stderr and "--model PATH" in system.stderr
    tc = subprocess.run([sys.executable, "-c", probe, "tcmalloc"], env=env, capture_output=True, text=True,
                        timeout=120)
    assert tc.returncode == 2 and "re-executing under tcmalloc" in tc.stderr and "--model PATH" in tc.stderr
    gpu = subprocess.run([sys.executable, "-c", probe.replace("'--model'", "'--device', 'cuda', '--model'"), "auto"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert gpu.returncode == 2 and "re-executing" not in gpu.stderr  # auto leaves GPU servers' allocator alone


def test_serve_without_model_names_model_path(tmp_path: Path) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    missing = subprocess.run([sys.executable, "-m", "rerankd.cli", "serve", "--model", "Qwen/Qwen3-Reranker-0.6B"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert "--model PATH" in missing.stderr
    no_config = subprocess.run([sys.executable, "-m", "rerankd.cli", "serve", "--model", str(tmp_path)],
                               env=env, capture_output=True, text=True, timeout=120)
    assert no_config.returncode == 2 and "--model PATH" in no_config.stderr


def test_help_lists_every_contract_flag() -> None:
    out = subprocess.run([sys.executable, "-m", "rerankd.cli", "serve", "--help"], capture_output=True, text=True)
    for flag in ("--model", "--served-model-name", "--backend", "--device", "--dtype", "--max-model-len",
                 "--max-batch-tokens", "--max-queue", "--host", "--port", "--api-key", "RERANKD_MODEL"):
        assert flag in out.stdout, flag


def test_serve_with_several_names_and_strict_mode(tiny_model_dir: Path, tmp_path: Path) -> None:
    """`--served-model-name` repeated and `--strict-model-names`, through the real command: every name is listed,
    the first is reported, an unknown one is a 404 naming them, and /info names --model as given."""
    replica = spawn_replica(tiny_model_dir, tmp_path, "--served-model-name", "rerank-v3.5", "--strict-model-names",
                            "--compile", "off")
    try:
        replica.wait_ready(timeout=600)
        models = httpx.get(f"{replica.url}/v1/models").json()
        assert [m["id"] for m in models["data"]] == ["tiny-reranker", "rerank-v3.5"]
        body = {"query": "q", "documents": ["a"]}
        alias = httpx.post(f"{replica.url}/v1/rerank", json={**body, "model": "rerank-v3.5"}, timeout=60)
        assert alias.status_code == 200 and alias.json()["model"] == "tiny-reranker"
        other = httpx.post(f"{replica.url}/v1/rerank", json={**body, "model": "rerank-english-v3.0"}, timeout=60)
        assert other.status_code == 404 and "'tiny-reranker', 'rerank-v3.5'" in other.json()["detail"]
        assert httpx.get(f"{replica.url}/info").json()["model_id"] == str(tiny_model_dir)
    finally:
        replica.stop()
