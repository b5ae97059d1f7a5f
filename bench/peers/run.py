"""The peer table: rerankd against the CPU peers, each in its serving form, alternating round by round.

One query × ``--docs`` documents (the 0.6B shape by default: 64 documents of 240–272 tokens), text in →
scores out over HTTP on 127.0.0.1, for each peer:

* ``card``: the Qwen3-Reranker model card's transformers code in float32 (``CardRecipe``, batches of 8), behind
  ``bench/peers/shim.py``; its scores are the reference of the agreement columns;
* ``openvino``: sentence-transformers ``CrossEncoder(..., backend="openvino")`` on the one-logit
  ``Qwen3ForSequenceClassification`` (score row ``w_yes − w_no``), behind the same shim;
* ``llama.cpp-f16``, ``llama.cpp-q8_0``: llama.cpp's ``llama-server --reranking`` (rank pooling) on GGUF
  conversions;
* ``vllm``: plain ``vllm serve`` from vLLM's CPU build, as ``deploy/vllm/serve.sh`` starts it, float32;
* ``rerankd``: ``rerankd serve`` with its defaults on this CPU.

Each round starts every peer's server in turn (the order rotates by one each round), sends one warm-up request
of other texts, times one request, and stops the server before the next peer starts: one peer in memory at a
time, and the same texts for every peer and round (a restarted server has no cache of them). Reported: each
peer's seconds per request (median over rounds), the ratio to rerankd's median, max |Δ| of the probabilities
and Spearman against the fp32 card, the prompt tokens the server says it scored, and the 1-minute load
average at each timed request (other work shares the cores: compare rows of one run, not across runs).

``bash bench/peers/setup.sh`` installs the peers first; a peer that is not set up, or whose server does not
start, gets a row that says why, and no timing.

    python bench/peers/run.py --rounds 2 --out bench/results/peers_cpu_0.6b.json
"""

# No `from __future__ import annotations`: @dataclass resolves string annotations through sys.modules, which a
# script loaded by file path (tests/unit/test_bench_scripts.py) is not in.
import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))  # benchlib, as `python bench/X.py` finds it

PEERS = ["card", "openvino", "llama.cpp-f16", "llama.cpp-q8_0", "vllm", "rerankd"]


@dataclass
class Peer:
    """How to start one peer's server, or why it cannot start here."""

    name: str
    serves: str  # what serves the request, for the table
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    ready_path: str = "/health"
    rerank_path: str = "/v1/rerank"
    body_extra: dict[str, Any] = field(default_factory=dict)
    settled_metric: str | None = None  # a /metrics gauge that reads 1 once the server runs at its steady speed
    why_not: str | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _setup_status(home: Path, step: str) -> str:
    """What setup.sh recorded for ``step``, or that it has not run."""
    status = home / "status"
    if status.exists():
        for line in status.read_text().splitlines():
            name, _, what = line.partition("\t")
            if name == step:
                return what
    return f"not set up: run `bash bench/peers/setup.sh` (nothing recorded for {step} in {status})"


def _peer(name: str, args: argparse.Namespace, port: int) -> Peer:
    home, model, host = Path(args.peers_home), args.model, "127.0.0.1"
    threads = str(args.threads)
    shim = str(ROOT / "bench" / "peers" / "shim.py")
    pythonpath = {"PYTHONPATH": f"{ROOT / 'src'}" + (f":{os.environ['PYTHONPATH']}" if "PYTHONPATH" in os.environ
                                                      else "")}
    if name == "card":
        return Peer(name, "model card's transformers code, fp32, batch 8 (bench/peers/shim.py)",
                    [sys.executable, shim, "--peer", "card", "--model", model, "--dtype", "float32",
                     "--threads", threads, "--port", str(port)], pythonpath)
    if name == "rerankd":
        # Defaults, so the fused forward is compiled in the background after /ready (--compile auto): timed once
        # it serves (rerankd_compiled_kernels_ready), as a server that has run for a few minutes would be. The
        # compile cache is this script's own, so other work's caches neither help nor suffer.
        return Peer(name, "`rerankd serve`, its defaults",
                    [sys.executable, "-m", "rerankd.cli", "serve", "--model", model, "--host", host,
                     "--port", str(port), "--log-level", "warning", "--compile-cache-dir", args.compile_cache_dir],
                    pythonpath, ready_path="/ready", settled_metric="rerankd_compiled_kernels_ready")
    if name == "openvino":
        python, ir = home / "venv" / "bin" / "python", home / "models" / "seqcls" / "openvino" / "openvino_model.xml"
        peer = Peer(name, "sentence-transformers CrossEncoder, backend=openvino, one-logit seq-cls, batch 8 "
                          "(bench/peers/shim.py)",
                    [str(python), shim, "--peer", "openvino", "--model", str(ir.parent.parent),
                     "--port", str(port)], pythonpath)
        if not python.exists() or not ir.exists():
            peer.why_not = f"openvino: {_setup_status(home, 'openvino')}"
        return peer
    if name.startswith("llama.cpp-"):
        kind = name.removeprefix("llama.cpp-")
        server, gguf = home / "llama.cpp" / "bin" / "llama-server", home / "models" / f"qwen3-reranker-{kind}.gguf"
        peer = Peer(name, f"`llama-server --reranking` (rank pooling), GGUF {kind}",
                    [str(server), "-m", str(gguf), "--reranking", "-c", "8192", "-t", threads, "--host", host,
                     "--port", str(port), "--no-webui"])
        if not server.exists():
            peer.why_not = f"llama-server: {_setup_status(home, 'llama.cpp')}"
        elif not gguf.exists():
            peer.why_not = f"GGUF {kind}: {_setup_status(home, f'gguf-{kind}')}"
        return peer
    if name == "vllm":
        venv = Path(args.vllm_venv)
        peer = Peer(name, "plain `vllm serve` (vLLM's CPU build), deploy/vllm/serve.sh, fp32",
                    ["bash", str(ROOT / "deploy" / "vllm" / "serve.sh"), "--dtype", "float32", "--max-model-len",
                     "8192", "--gpu-memory-utilization", str(args.vllm_memory_share)],
                    body_extra={"model": model})
        if not (venv / "bin" / "vllm").exists():
            peer.why_not = (f"no vLLM CPU environment at {venv} (`bash tests/vllm_cpu/run` builds .venv-vllm; "
                            "--vllm-venv names another)")
            return peer
        from rerankd.engine.backends.vllm_backend import cpu_engine_environment

        prefix = str(venv.resolve())
        peer.env = {"MODEL": model, "HOST": host, "PORT": str(port), "PATH": f"{prefix}/bin:{os.environ['PATH']}",
                    **cpu_engine_environment(os.environ, prefix)}
        return peer
    raise ValueError(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")


@contextlib.contextmanager
def _serving(peer: Peer, port: int, log: Path, timeout_s: float) -> Iterator[tuple[str, dict[str, Any]]]:
    """The peer's server, in its own process group (vLLM spawns engine processes), until the block ends.

    Yields its URL and how long it took to be ready (and settled, where the peer has a ``settled_metric``)."""
    import httpx

    url = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(peer.command, env={**os.environ, **peer.env}, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)
    try:
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            if proc.poll() is not None:
                lines = log.read_text(errors="replace").strip().splitlines()
                # The first exception named in the log is the cause; the last lines are the shutdown that followed.
                cause = next((ln for ln in lines if "Error: " in ln and "WARNING" not in ln), "")
                raise RuntimeError(f"server exited with {proc.returncode} before {peer.ready_path} answered: "
                                   f"{cause.strip()[:400]} (log {log}; last line: {lines[-1][:200] if lines else ''})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + peer.ready_path, timeout=5).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready after {timeout_s:.0f} s (log {log})")
            time.sleep(1.0)
        info: dict[str, Any] = {"ready_s": round(time.monotonic() - started, 1)}
        if peer.settled_metric:
            info["settled_s"] = None
            while time.monotonic() < deadline and proc.poll() is None:
                with contextlib.suppress(httpx.HTTPError):
                    metrics = httpx.get(url + "/metrics", timeout=10).text
                    if any(line.startswith(peer.settled_metric) and line.split()[-1] in ("1", "1.0")
                           for line in metrics.splitlines()):
                        info["settled_s"] = round(time.monotonic() - started, 1)
                        break
                time.sleep(2.0)
        yield url, info
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _rerank(url: str, peer: Peer, query: str, documents: list[str]) -> tuple[float, list[float], int | None]:
    """Seconds, the scores in document order, and the prompt tokens the server reports."""
    import httpx

    body = {"query": query, "documents": documents, **peer.body_extra}
    started = time.perf_counter()
    resp = httpx.post(url + peer.rerank_path, json=body, timeout=None)
    seconds = time.perf_counter() - started
    if resp.status_code != 200:
        raise RuntimeError(f"{peer.rerank_path} answered {resp.status_code}: {resp.text[:300]}")
    data = resp.json()
    scores: list[float | None] = [None] * len(documents)
    for r in data["results"]:
        scores[int(r["index"])] = float(r["relevance_score"])
    if any(s is None for s in scores):
        raise RuntimeError(f"{sum(s is None for s in scores)} documents got no score")
    usage = data.get("usage") or {}
    tokens = usage.get("prompt_tokens") or usage.get("total_tokens")
    return seconds, [float(s) for s in scores if s is not None], int(tokens) if tokens else None


def _versions(args: argparse.Namespace) -> dict[str, str]:
    """What each environment runs, asked of that environment (a missing one answers "not installed")."""
    home, venv = Path(args.peers_home), Path(args.vllm_venv)
    probe = ("import importlib.metadata as m, sys\nfor d in sys.argv[1:]:\n    try: print(d, m.version(d))\n"
             "    except m.PackageNotFoundError: pass")
    asks = {"rerankd's": [sys.executable, "-c", probe, "torch", "transformers"],
            "peers venv": [str(home / "venv" / "bin" / "python"), "-c", probe, "openvino", "optimum-intel",
                           "sentence-transformers", "transformers", "torch"],
            "llama.cpp": [str(home / "llama.cpp" / "bin" / "llama-server"), "--version"],
            "vllm": [str(venv / "bin" / "python"), "-c", probe, "vllm-cpu", "torch", "transformers"]}
    out = {}
    for name, cmd in asks.items():
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            text = (done.stdout + done.stderr).strip().replace("\n", "; ")
            out[name] = text if done.returncode == 0 else f"failed: {text[-200:]}"
        except OSError:
            out[name] = "not installed"
        except subprocess.TimeoutExpired:
            out[name] = "did not answer in 120 s"
    return out


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 2) if xs else None


def _summary(rows: dict[str, dict[str, Any]], card_scores: list[float] | None = None) -> None:
    """Median seconds, ratio to rerankd and agreement with the fp32 card, filled into each row.

    ``card_scores``: the card's scores from an earlier run on the same texts, where this run has no card row."""
    from benchlib.agreement import compare_scores

    for row in rows.values():
        row["median_s"] = _median(row["times_s"])
    ref = rows.get("rerankd", {}).get("median_s")
    card = rows.get("card", {}).get("scores") or card_scores
    for row in rows.values():
        row["x_rerankd_time"] = round(row["median_s"] / ref, 2) if row["median_s"] and ref else None
        row.setdefault("agreement_vs_card_fp32", None)
        if card and row.get("scores") and row is not rows.get("card"):
            agree = compare_scores(card, row["scores"])
            row["agreement_vs_card_fp32"] = {"max_abs_delta_p": agree["max_abs_delta_score"],
                                             "spearman": agree["spearman"],
                                             "ranking_identical": agree["ranking_identical"]}


def _table(rows: dict[str, dict[str, Any]]) -> str:
    lines = ["| peer | serves as | runs (s) | median s / request | × rerankd's time | max \\|Δp\\| vs card fp32 | "
             "Spearman vs card | prompt tokens | load avg (1 min) at each run |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for name, row in rows.items():
        if row.get("why_not"):
            lines.append(f"| {name} | {row['serves']} | — not run: {row['why_not']} | — | — | — | — | — | — |")
            continue
        agree = row.get("agreement_vs_card_fp32")
        delta = f"{agree['max_abs_delta_p']:.2g}" if agree else ("reference" if name == "card" else "—")
        rho = f"{agree['spearman']:.4f}" if agree else ("reference" if name == "card" else "—")
        runs = ", ".join(f"{t:.1f}" for t in row["times_s"]) or "—"
        if row["errors"]:
            runs += " (failed: " + "; ".join(row["errors"])[:300] + ")"
        med = f"{row['median_s']:.1f}" if row["median_s"] else "—"
        ratio = f"{row['x_rerankd_time']:.2f}" if row["x_rerankd_time"] else "—"
        loads = ", ".join(f"{x[0]:.1f}" for x in row["loadavg_at_runs"]) or "—"
        lines.append(f"| {name} | {row['serves']} | {runs} | {med} | {ratio} | {delta} | {rho} | "
                     f"{row['prompt_tokens'] or '—'} | {loads} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="/work/models/0.6b", help="the causal Qwen3-Reranker checkpoint (the card's)")
    p.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, from: {', '.join(PEERS)}")
    p.add_argument("--rounds", type=int, default=2,
                   help="rounds of the alternation; a peer not yet set up is looked for again at each round")
    p.add_argument("--docs", type=int, default=64)
    p.add_argument("--doc-tokens", default="240-272")
    p.add_argument("--warmup-docs", type=int, default=0, help="documents in each warm-up request (0: --docs)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for the card and llama.cpp")
    p.add_argument("--peers-home", default=os.environ.get("PEERS_HOME", "/work/venvs/peers"),
                   help="where bench/peers/setup.sh put the peers")
    p.add_argument("--vllm-venv", default=str(ROOT / ".venv-vllm"), help="vLLM's CPU build (tests/vllm_cpu/run)")
    p.add_argument("--vllm-memory-share", type=float, default=0.35,
                   help="vLLM's --gpu-memory-utilization (on its CPU build: the share of the memory node for the model, "
                        "activations and KV cache; at 0.2 of 23 GB the fp32 0.6B model left 0.5 GiB of KV cache, less "
                        "than one 8192-token prompt needs (1.75 GiB), and vLLM refused to start)")
    p.add_argument("--ready-timeout", type=float, default=900.0,
                   help="seconds a server may take to start (rerankd: until its compiled kernels serve)")
    p.add_argument("--compile-cache-dir", default="/tmp/rerankd-peers-inductor",
                   help="rerankd serve --compile-cache-dir: later rounds start from the first one's kernels")
    p.add_argument("--logs", default="/tmp/rerankd-peers-logs", help="each server's output, one file per start")
    p.add_argument("--card-scores", default=None,
                   help="a results file of an earlier run on the same --model/--docs/--doc-tokens: its card row's "
                        "scores are the agreement reference when this run leaves the card out (it is the slowest)")
    p.add_argument("--list", action="store_true", help="print each peer's command and whether it can run, then exit")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "peers_cpu.json"))
    args = p.parse_args()
    # A stopped run (kill PID) still stops the server it started: SystemExit runs _serving's cleanup. SIGINT is
    # ignored in a background job, so this is the signal that reaches it there.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    from rerankd.benchmark.report import cpu_name
    from rerankd.benchmark.workload import load_tokenizer, make_workload

    names = [n for n in args.peers.split(",") if n]
    for n in names:
        _peer(n, args, 0)  # unknown names fail here, before anything starts
    if args.list:
        for n in names:
            peer = _peer(n, args, 0)
            print(f"{n}: {'NOT RUNNABLE: ' + peer.why_not if peer.why_not else 'ok'}\n    {' '.join(peer.command)}")
        return
    tokenizer = load_tokenizer(args.model)
    timed = make_workload(tokenizer, args.docs, args.doc_tokens, seed=0, variants=1).requests[0]
    warm = make_workload(tokenizer, args.warmup_docs or args.docs, args.doc_tokens, seed=1, variants=1).requests[0]
    card_scores = None
    if args.card_scores:
        earlier = json.loads(Path(args.card_scores).read_text())
        same = (earlier["model"], earlier["docs"], earlier["doc_tokens"], earlier["doc_tokens_counted"])
        if same != (args.model, args.docs, args.doc_tokens, sum(timed.doc_tokens)):
            raise SystemExit(f"--card-scores {args.card_scores} scored other texts ({same}); run the same workload")
        card_scores = earlier["rows"]["card"]["scores"]
        if not card_scores:
            raise SystemExit(f"--card-scores {args.card_scores}: its card row has no scores")
    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    for n in names:
        peer = _peer(n, args, 0)
        rows[n] = {"serves": peer.serves, "command": peer.command, "why_not": peer.why_not, "times_s": [],
                   "loadavg_at_runs": [], "errors": [], "scores": None, "prompt_tokens": None}
        if peer.why_not:
            print(f"{n}: NOT RUN: {peer.why_not}", flush=True)
    result: dict[str, Any] = {
        "command": "python bench/peers/run.py " + " ".join(sys.argv[1:]), "cpu": cpu_name(),
        "cores": os.cpu_count(), "model": args.model, "docs": args.docs, "doc_tokens": args.doc_tokens,
        "doc_tokens_counted": sum(timed.doc_tokens), "rounds": args.rounds, "loadavg_start": _loadavg(),
        "versions": _versions(args), "card_scores_from": args.card_scores, "rows": rows}
    print(f"versions: {result['versions']}", flush=True)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for n in order:
            row = rows[n]
            if row["errors"]:
                continue  # it failed once: its reason is in the row, and another try would cost minutes
            port = _free_port()
            peer = _peer(n, args, port)
            if peer.why_not:  # asked again each round: a setup step still running may have finished since
                continue
            if row["why_not"]:
                print(f"round {r + 1}: {n} is set up now: it joins the run (fewer rounds)", flush=True)
                row["why_not"], row["joined_in_round"] = None, r + 1
            print(f"round {r + 1}: {n} starting (load average {_loadavg()})", flush=True)
            try:
                with _serving(peer, port, logs / f"{n}-round{r + 1}.log", args.ready_timeout) as (url, info):
                    if "settled_s" in info:
                        print(f"round {r + 1}: {n} ready after {info['ready_s']} s, {peer.settled_metric} = 1 after "
                              f"{info['settled_s']} s" if info["settled_s"] else
                              f"round {r + 1}: {n}: {peer.settled_metric} never read 1: timed as it serves",
                              flush=True)
                    _rerank(url, peer, warm.query, warm.documents)
                    load = _loadavg()
                    seconds, scores, tokens = _rerank(url, peer, timed.query, timed.documents)
            except Exception as exc:
                row["errors"].append(f"round {r + 1}: {type(exc).__name__}: {exc}")
                print(f"round {r + 1}: {n} FAILED: {exc}", flush=True)
                continue
            row.setdefault("startup", []).append(info)
            row["times_s"].append(round(seconds, 2))
            row["loadavg_at_runs"].append(load)
            row["scores"] = row["scores"] or scores
            row["prompt_tokens"] = tokens
            print(f"round {r + 1}: {n} {seconds:.2f} s (load average {load})", flush=True)
            _summary(rows, card_scores)  # written after every request: a run stopped early keeps what it measured
            result["loadavg_end"] = _loadavg()
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    _summary(rows, card_scores)
    result["versions"] = _versions(args)  # again: a setup step may have finished during the run
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(_table(rows))
    print(f"load average at start {result['loadavg_start']}, at end {_loadavg()}; wrote {args.out}")


if __name__ == "__main__":
    main()
