"""Embeddings on CPU: rerankd's engine next to sentence-transformers' ``SentenceTransformer``, same model, same run;
then the memory of the two-model stack (a reranker and an embedder behind one ``rerankd up``).

Why both in one run: on shared cores the speed of a machine changes from minute to minute, so the two are timed
*alternating*: the passages are cut into ``--rounds`` slices, and each slice is embedded by rerankd and by
SentenceTransformer back to back (the order flips every round), so noise from other processes hits both.

* batch throughput: ``--passages`` passages of ``--passage-tokens`` tokens (default 1000 × 240–272, the
  Qwen3-Embedding 0.6B shape with random weights), embedded as documents (no instruction). rerankd goes the server's
  way without HTTP: ``RerankEngine.embed_all`` (the embedding prompt builder, the dynamic batcher's token budget,
  the torch backend's last-token forward, normalisation), one call per round; SentenceTransformer's ``encode``
  with ``--st-batch`` rows per forward (its own length sort) and ``normalize_embeddings``.
  Both from text to unit vectors, tokenization included; embeddings/s and tokens/s (the model's tokens, the
  appended end-of-text included) over the summed time of all rounds.
* single-query latency: ``--queries`` short queries, one per call, as queries (the card's instruction: rerankd's
  ``is_query``, SentenceTransformer's ``prompt_name="query"``), alternating; p50 and p99 of the calls.
* agreement: the largest |component difference| between the two's vectors for the same texts (both float32 on
  the same weights only when ``--dtype float32``; a bf16 run differs by bf16's rounding).
* the stack: ``rerankd up --model RERANKER --embedding-model EMBEDDER --no-ui`` on free ports, then the RSS of each
  process it started (replicas and gateway) once ready and again after one rerank and one embedding request
  through the gateway. ``--no-stack`` skips it.

Usage::

    python bench/embeddings_cpu.py --out bench/results/embeddings_cpu.json
    python bench/embeddings_cpu.py --passages 200 --rounds 4     # a fifth of the work
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchlib.results import write_result
from benchlib.serve import rss_mb
from rerankd.benchmark.report import cpu_name, percentile
from rerankd.benchmark.workload import QUERIES, make_workload
from rerankd.deployment.up import read_banner

HERE = Path(__file__).resolve().parent
# Local model directories only: without this, loading SentenceTransformer's processor waits on the hub's
# timeouts where there is no network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
DEFAULT_EMBEDDER = "/work/models/embed-0.6b-random"
DEFAULT_RERANKER = "/work/models/qwen3-reranker-0.6b-random"


def ensure_model(path: Path, shape: str) -> None:
    """Build the random-weight model directory ``path`` of ``shape`` unless it is there (offline, no hub)."""
    if (path / "config.json").exists():
        return
    print(f"building random {shape} model into {path}", flush=True)
    subprocess.run([sys.executable, "-m", "rerankd.devtools.random_model", "--shape", shape, "--out", str(path)],
                   check=True)


class Rerankd:
    """rerankd's engine on one event loop, as ``rerankd serve`` runs it (without HTTP)."""

    name = "rerankd engine"

    def __init__(self, model: str, dtype: str, compile_mode: str, threads: int) -> None:
        from rerankd.engine.config import EngineConfig
        from rerankd.engine.engine import load_engine

        self.loop = asyncio.new_event_loop()
        config = EngineConfig(model=model, task="embed", device="cpu", dtype=dtype, compile=compile_mode)
        self.engine = load_engine(config)
        self.threads = threads

        async def start() -> None:  # the batcher's worker runs on the loop that submits (the server's lifespan)
            self.engine.batcher.start()

        self.loop.run_until_complete(start())

    def embed(self, texts: list[str], *, query: bool = False) -> np.ndarray:
        import torch

        torch.set_num_threads(self.threads)
        return np.asarray(self.loop.run_until_complete(self.engine.embed_all(texts, is_query=query)).vectors)

    def close(self) -> None:
        self.loop.run_until_complete(self.engine.close())
        self.loop.close()


class SentenceTransformers:
    """sentence-transformers' ``SentenceTransformer`` on the model's own sentence-transformers files."""

    name = "sentence-transformers SentenceTransformer"

    def __init__(self, model: str, dtype: str, batch: int, threads: int) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(model, device="cpu", model_kwargs={"dtype": getattr(torch, dtype)})
        self.batch = batch
        self.threads = threads

    def embed(self, texts: list[str], *, query: bool = False) -> np.ndarray:
        import torch

        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            out = self.model.encode(texts, batch_size=self.batch, normalize_embeddings=True,
                                    prompt_name="query" if query else None, convert_to_numpy=True)
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        del self.model


def measure_engines(args: argparse.Namespace, dtype: str) -> dict[str, Any]:
    """Batch throughput, single-query latency and agreement of the two, timed alternating."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    request = make_workload(tokenizer, args.passages, args.passage_tokens, seed=args.seed, variants=1).requests[0]
    passages = request.documents
    # The tokens each model sees: the text's tokens and the end-of-text the embedding tokenizer appends.
    tokens = sum(len(ids) for ids in tokenizer(passages)["input_ids"])
    queries = [f"{QUERIES[i % len(QUERIES)]} (#{i})" for i in range(args.queries)]

    started = time.perf_counter()
    engines = [Rerankd(args.model, dtype, args.compile, args.threads),
               SentenceTransformers(args.model, dtype, args.st_batch, args.threads)]
    loaded_s = time.perf_counter() - started
    for engine in engines:  # warm-up: first-call costs (a compile, oneDNN's kernel choice) are not timed
        engine.embed(passages[: min(8, len(passages))])
        engine.embed(queries[:1], query=True)

    rounds = max(1, min(args.rounds, len(passages)))
    slices = [passages[i::rounds] for i in range(rounds)]
    batch_s: dict[str, list[float]] = {e.name: [] for e in engines}
    vectors: dict[str, list[np.ndarray]] = {e.name: [] for e in engines}
    for r, chunk in enumerate(slices):
        for engine in engines if r % 2 == 0 else engines[::-1]:
            t0 = time.perf_counter()
            out = engine.embed(chunk)
            batch_s[engine.name].append(time.perf_counter() - t0)
            vectors[engine.name].append(out)
            print(f"round {r + 1}/{rounds} {engine.name}: {len(chunk)} passages in {batch_s[engine.name][-1]:.1f} s",
                  flush=True)

    latency: dict[str, list[float]] = {e.name: [] for e in engines}
    query_vectors: dict[str, list[np.ndarray]] = {e.name: [] for e in engines}
    for i, q in enumerate(queries):
        for engine in engines if i % 2 == 0 else engines[::-1]:
            t0 = time.perf_counter()
            query_vectors[engine.name].append(engine.embed([q], query=True)[0])
            latency[engine.name].append(time.perf_counter() - t0)

    ours, theirs = (np.concatenate(vectors[e.name]) for e in engines)
    q_ours, q_theirs = (np.stack(query_vectors[e.name]) for e in engines)
    rows = []
    for engine in engines:
        total = sum(batch_s[engine.name])
        lat = latency[engine.name]
        rows.append({
            "path": engine.name, "passages": len(passages), "tokens": tokens,
            "round_s": [round(s, 2) for s in batch_s[engine.name]], "batch_s": round(total, 2),
            "embeddings_per_s": round(len(passages) / total, 2), "tokens_per_s": round(tokens / total, 1),
            "query_p50_ms": round(1000 * percentile(lat, 0.5), 1), "query_p99_ms": round(1000 * percentile(lat, 0.99), 1),
            "query_mean_ms": round(1000 * statistics.fmean(lat), 1),
        })
    base = rows[1]["tokens_per_s"]
    for row in rows:
        row["x_sentence_transformers"] = round(row["tokens_per_s"] / base, 2)
    for engine in engines:
        engine.close()
    return {
        "rows": rows, "load_s": round(loaded_s, 1),
        "max_abs_diff_passages": float(np.abs(ours - theirs).max()),
        "max_abs_diff_queries": float(np.abs(q_ours - q_theirs).max()),
        "min_cosine": float(min((ours * theirs).sum(1).min(), (q_ours * q_theirs).sum(1).min())),
        "dimensions": int(ours.shape[1]),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _process_rss(up_pid: int) -> dict[str, float]:
    """RSS (MB) of each process ``rerankd up`` started, named by its role (replicas by port order)."""
    import psutil

    out: dict[str, float] = {}
    for child in psutil.Process(up_pid).children(recursive=False):
        cmd = child.cmdline()
        role = next((c for c in ("serve", "gateway", "ui") if c in cmd), child.name())
        if role == "serve":
            model = Path(cmd[cmd.index("--model") + 1]).name if "--model" in cmd else "?"
            role = f"serve {model}"
        out[role] = round(rss_mb(child.pid), 1)
    return out


def measure_stack(args: argparse.Namespace) -> dict[str, Any]:
    """RSS of a reranker + embedder ``rerankd up`` (no UI), idle and after one request of each task."""
    import httpx

    data_dir = Path(tempfile.mkdtemp(prefix="rerankd-embed-bench-"))
    command = [sys.executable, "-m", "rerankd.cli", "up", "--model", args.reranker, "--embedding-model", args.model,
               "--no-ui", "--data-dir", str(data_dir), "--gateway-port", str(_free_port()),
               "--server-base-port", str(_free_port()), "--compile", args.compile, "--dtype", args.dtype]
    env = {k: v for k, v in os.environ.items() if k not in ("RERANKD_API_KEY", "RERANKD_ADMIN_KEY")}
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        printed = read_banner(proc, args.stack_timeout)
        ready_s = time.perf_counter() - started
        idle = _process_rss(proc.pid)
        headers = {"Authorization": f"Bearer {printed['API key']}"}
        gateway = printed["gateway"]
        reranked = httpx.post(f"{gateway}/v1/rerank", headers=headers, timeout=600,
                              json={"query": QUERIES[0], "documents": ["Paris is in France.", "Bananas."]})
        embedded = httpx.post(f"{gateway}/v1/embeddings", headers=headers, timeout=600,
                              json={"input": ["Paris is in France.", "Bananas."]})
        for answer in (reranked, embedded):
            answer.raise_for_status()
        served = _process_rss(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return {"command": shlex.join(["rerankd", *command[3:]]), "ready_s": round(ready_s, 1),
            "rss_mb_ready": idle, "rss_mb_after_requests": served,
            "total_mb_ready": round(sum(idle.values()), 1), "total_mb_after_requests": round(sum(served.values()), 1)}


def table(rows: list[dict[str, Any]]) -> str:
    """The engines' rows as the markdown table of bench/README.md."""
    lines = ["| path | passages | rounds (s) | total s | embeddings/s | tokens/s | × SentenceTransformer "
             "| query p50 ms | query p99 ms |", "|---|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['path']} | {r['passages']} | {', '.join(f'{s:g}' for s in r['round_s'])} | {r['batch_s']} "
                     f"| {r['embeddings_per_s']} | {r['tokens_per_s']} | {r['x_sentence_transformers']} "
                     f"| {r['query_p50_ms']} | {r['query_p99_ms']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_EMBEDDER, help="embedding model directory (built if missing)")
    p.add_argument("--reranker", default=DEFAULT_RERANKER, help="reranker of the two-model stack (built if missing)")
    p.add_argument("--passages", type=int, default=1000)
    p.add_argument("--passage-tokens", default="240-272")
    p.add_argument("--rounds", type=int, default=4, help="alternating slices of the passages")
    p.add_argument("--queries", type=int, default=40, help="single-query calls per path")
    p.add_argument("--st-batch", type=int, default=32, help="SentenceTransformer.encode's batch_size")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="both paths' weights; auto = what rerankd picks on this CPU")
    p.add_argument("--compile", default="on", choices=["on", "off"],
                   help="rerankd's fused CPU forward (on: compiled kernels, what --compile auto serves once built)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-stack", dest="stack", action="store_false", help="skip the two-model stack's memory")
    p.add_argument("--stack-timeout", type=float, default=1800.0)
    p.add_argument("--out", default=str(HERE / "results" / "embeddings_cpu.json"))
    args = p.parse_args(argv)

    from rerankd.engine.backends.torch_backend import cpu_has_fast_bf16

    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if cpu_has_fast_bf16() else "float32")
    ensure_model(Path(args.model), "embed-0.6b")
    result: dict[str, Any] = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]), "cpu": cpu_name(),
        "cores": os.cpu_count(), "threads": args.threads, "dtype": dtype, "compile": args.compile,
        "python": platform.python_version(), "load_average_before": os.getloadavg()[0],
    }
    result["engines"] = measure_engines(args, dtype)
    result["load_average_after"] = os.getloadavg()[0]
    if args.stack:
        ensure_model(Path(args.reranker), "0.6b")
        result["stack"] = measure_stack(args)
    out = Path(args.out)
    write_result(out, result)
    engines = result["engines"]
    print(table(engines["rows"]))
    print(f"max |Δ| passages {engines['max_abs_diff_passages']:.2e}, queries {engines['max_abs_diff_queries']:.2e}; "
          f"min cosine {engines['min_cosine']:.6f}")
    if args.stack:
        print(json.dumps(result["stack"], indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
