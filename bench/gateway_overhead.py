"""What the gateway adds: latency (p50/p99) and max requests/s, through the gateway vs the upstream direct.

The upstream is a *fast* stub (a real HTTP server answering /v1/rerank with a fixed, valid body at once),
so the numbers are the gateway's own cost: auth (cached key), rate-limit check, ledger row, forwarding.
Load comes from `wrk` (Debian package `wrk`) with a Lua script for the POST body and key.

    python bench/gateway_overhead.py --duration 15      # writes bench/results/gateway_overhead.json

Each target is measured at 1 connection (latency: one request at a time), at --connections
(throughput: closed loop), and open-loop at --rate requests/s (fixed arrival schedule, aiohttp client, so
queueing shows up as latency; issue 7's goal: the gateway adds < 2 ms p99 at 500 requests/s). Everything runs
on this machine's 2 cores: the load generator, the gateway and the stub compete for them, so treat max
requests/s as a floor and tails as pessimistic.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchlib.results import write_result
from rerankd.benchmark.report import cpu_name

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "bench-admin-key"
BODY = {"query": "what is a reranker", "documents": ["a cross-encoder scores pairs", "bananas are yellow"],
        "top_n": 2}

STUB = r'''
import json, sys
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
ANSWER = json.dumps({"id": "stub", "model": "stub-reranker", "results": [
    {"index": 0, "relevance_score": 0.9, "document": {"text": "a cross-encoder scores pairs"}},
    {"index": 1, "relevance_score": 0.1, "document": {"text": "bananas are yellow"}}],
    "usage": {"prompt_tokens": 150, "total_tokens": 150}}).encode()
async def rerank(request):
    await request.body()
    return Response(ANSWER, media_type="application/json")
async def ready(request):
    return Response(b'{"status":"ready"}', media_type="application/json")
app = Starlette(routes=[Route("/v1/rerank", rerank, methods=["POST"]), Route("/ready", ready)])
if __name__ == "__main__":
    import uvicorn
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} never answered 200")


def run_wrk(url: str, key: str | None, connections: int, duration: int, workdir: Path) -> dict[str, float]:
    headers = 'wrk.headers["Content-Type"] = "application/json"\n'
    if key:
        headers += f'wrk.headers["Authorization"] = "Bearer {key}"\n'
    script = workdir / "post.lua"
    script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(json.dumps(BODY))}\n{headers}')
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script),
                          f"{url}/v1/rerank"], capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"connections": connections, "requests_per_s": rps, "p50_ms": ms("50"), "p90_ms": ms("90"),
            "p99_ms": ms("99"), "non_2xx": int(errors.group(1)) if errors else 0}


def _cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    import psutil

    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def open_loop(url: str, key: str | None, rate: float, duration: float, pid: int | None = None) -> dict[str, float]:
    """Requests on a fixed schedule (not waiting for answers); latency from scheduled send to full answer.

    With ``pid``, also the CPU that process spent per request (user + system) during the run.
    """
    cpu_before = _cpu_seconds(pid)
    import asyncio

    import aiohttp

    async def run() -> tuple[list[float], int]:
        latencies: list[float] = []
        errors = 0
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        body = json.dumps(BODY).encode()
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async def one(at: float) -> None:
                nonlocal errors
                try:
                    async with session.post(f"{url}/v1/rerank", data=body, headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    latencies.append(loop.time() - at)
                else:
                    errors += 1

            start = loop.time() + 0.1
            tasks = []
            for i in range(int(rate * duration)):
                at = start + i / rate
                await asyncio.sleep(max(0.0, at - loop.time()))
                tasks.append(asyncio.create_task(one(at)))
            await asyncio.gather(*tasks)
        return latencies, errors

    latencies, errors = asyncio.run(run())
    latencies.sort()

    def q(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 3)

    result = {"rate": rate, "requests": len(latencies) + errors, "errors": errors, "p50_ms": q(0.50),
              "p90_ms": q(0.90), "p99_ms": q(0.99)}
    if pid is not None:
        result["cpu_ms_per_request"] = round((_cpu_seconds(pid) - cpu_before) * 1000 / max(1, result["requests"]), 3)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32, help="connections for the throughput run")
    parser.add_argument("--rate", type=float, default=500.0, help="requests/s for the open-loop run")
    parser.add_argument("--warmup", type=float, default=5.0,
                        help="seconds of open-loop load at --rate before the measured open-loop run (not counted)")
    parser.add_argument("--open-loop-runs", type=int, default=3,
                        help="measured open-loop runs per target; the report gives each and their median")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gateway_overhead.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install -y wrk")

    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        try:
            stub_port, gw_port = free_port(), free_port()
            (workdir / "stub.py").write_text(STUB)
            procs.append(subprocess.Popen([sys.executable, str(workdir / "stub.py"), str(stub_port)]))
            stub = f"http://127.0.0.1:{stub_port}"
            wait_ready(stub + "/ready")
            env = {**os.environ, "RERANKD_LOG_LEVEL": "warning"}
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "rerankd.cli", "gateway", "--upstream", stub, "--port", str(gw_port),
                 "--database-url", f"sqlite:///{workdir / 'gw.db'}", "--admin-key", ADMIN], env=env))
            gateway = f"http://127.0.0.1:{gw_port}"
            wait_ready(gateway + "/ready")
            key = httpx.post(f"{gateway}/admin/keys", json={"name": "bench"},
                             headers={"Authorization": f"Bearer {ADMIN}"}).json()["key"]
            results: dict[str, dict[str, dict[str, float]]] = {}
            for name, url, auth, pid in (("direct", stub, None, procs[0].pid), ("gateway", gateway, key, procs[1].pid)):
                run_wrk(url, auth, 4, 2, workdir)  # warm up connections and code paths
                results[name] = {"latency": run_wrk(url, auth, 1, args.duration, workdir),
                                 "throughput": run_wrk(url, auth, args.connections, args.duration, workdir)}
                # Open loop last, after a warm-up at the same rate: connection pools filled, first-use
                # code paths and the ledger backlog of the throughput run behind us. Tail latency is noisy
                # on 2 shared cores, so several runs and their median.
                open_loop(url, auth, args.rate, args.warmup)
                runs = [open_loop(url, auth, args.rate, args.duration, pid) for _ in range(args.open_loop_runs)]
                median = {q: sorted(r[q] for r in runs)[len(runs) // 2] for q in ("p50_ms", "p90_ms", "p99_ms")}
                results[name]["open_loop"] = {"rate": args.rate, "requests": sum(r["requests"] for r in runs),
                                              "errors": sum(r["errors"] for r in runs), **median,
                                              "cpu_ms_per_request": runs[-1].get("cpu_ms_per_request"),
                                              "runs": runs}
        finally:
            for proc in reversed(procs):
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)

    added = {q: round(results["gateway"]["latency"][q] - results["direct"]["latency"][q], 3)
             for q in ("p50_ms", "p90_ms", "p99_ms")}
    added_open = {q: round(results["gateway"]["open_loop"][q] - results["direct"]["open_loop"][q], 3)
                  for q in ("p50_ms", "p90_ms", "p99_ms")}
    report = {"command": "python bench/gateway_overhead.py " + " ".join(sys.argv[1:]),
              "machine": f"{cpu_name()}, {os.cpu_count()} cores",
              "results": results, "gateway_added_latency_ms_at_1_connection": added,
              f"gateway_added_latency_ms_at_{args.rate:g}_rps_open_loop": added_open}
    write_result(args.out, report)
    print(f"{'target':8} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for name, runs in results.items():
        for kind in ("latency", "throughput"):
            run = runs[kind]
            print(f"{name:8} {run['connections']:5.0f} {run['requests_per_s']:9.0f} {run['p50_ms']:8.3f} "
                  f"{run['p90_ms']:8.3f} {run['p99_ms']:8.3f} {run['non_2xx']:8.0f}")
    print(f"gateway adds (1 connection): p50 {added['p50_ms']} ms, p99 {added['p99_ms']} ms")
    for name, runs in results.items():
        run = runs["open_loop"]
        print(f"{name:8} open loop at {run['rate']:g}/s (median of {len(run['runs'])}): p50 {run['p50_ms']} ms, "
              f"p90 {run['p90_ms']} ms, p99 {run['p99_ms']} ms, errors {run['errors']:.0f}, "
              f"{run['cpu_ms_per_request']} ms CPU/request; p99 per run "
              + ", ".join(str(r["p99_ms"]) for r in run["runs"]))
    print(f"gateway adds (open loop at {args.rate:g}/s): p50 {added_open['p50_ms']} ms, p99 {added_open['p99_ms']} ms")


if __name__ == "__main__":
    main()
