"""What tracing costs while it is off: the gateway's request path, this code against the code before it.

Why in-process: the instrumentation adds a few span sites per request, each a global read while tracing is
off; over loopback HTTP with a load generator on the same two cores that is far below the noise. So each
request here is one ASGI call into the real gateway app (lifespan started: SQLite ledger, key cache, rate
limiter, aiohttp forwarding with failover) that forwards to a fast stub replica (a real HTTP server in a
subprocess, from ``bench/gateway_overhead.py``). The same script runs under two source trees at once, one
child process each, in alternating short rounds (ABBA), so drift in the machine's load hits both alike:

    git archive <commit-before> src | tar -x -C /tmp/otel-base
    python bench/tracing_overhead.py --before /tmp/otel-base/src     # writes bench/results/tracing_overhead.json

Measured: the gateway process's CPU time per request (all its threads; the stub's is its own), per round; the
report gives each tree's median and the median of the per-round differences (after − before, paired rounds),
and, independent of the load, the Python and C function calls one request makes on the event loop's thread.
It also times the primitives one instrumented line runs while off (:func:`rerankd.observability.tracing.span`,
``inject``) beside what the OpenTelemetry API's own no-op tracer and a recording SDK tracer cost per span.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from benchlib.results import write_result

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "bench-admin-key"
BODY = json.dumps({"query": "what is a reranker", "documents": ["a cross-encoder scores pairs", "bananas are yellow"],
                   "top_n": 2}).encode()


async def _call(app: Any, state: dict[str, Any], method: str, path: str, body: bytes,
                token: str) -> tuple[int, bytes]:
    """One HTTP request as uvicorn would hand it to the app (lifespan state copied into the scope)."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                         (b"authorization", f"Bearer {token}".encode()), (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80), "state": dict(state)}
    delivered = False
    never = asyncio.Event()
    status, chunks = 0, []

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await never.wait()  # the client never hangs up
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(chunks)


_COUNTING = contextvars.ContextVar("counting", default=False)
"""Set in the benchmark's task while it counts: the request's own tasks inherit it, the gateway's background
tasks (health checks, the ledger's flushes, started before) do not, so their timing does not move the count."""


def _count_call(calls: list[int], frame: Any, event: str, arg: Any) -> None:
    if event in ("call", "c_call") and _COUNTING.get():
        calls[0] += 1


async def _serve_rounds(stub: str, workdir: str) -> None:
    """A child: the in-process gateway app, warmed up; then, for each ``N`` read from stdin, N sequential
    requests and one line back: the CPU microseconds this process spent per request (all its threads; the
    stub's CPU is its own). CPU time, not wall time: on a shared machine wall time measures the neighbours."""
    from rerankd.gateway.app import create_gateway_app
    from rerankd.gateway.settings import GatewaySettings
    from rerankd.observability.logging import configure_logging

    configure_logging("warning", "text")
    settings = GatewaySettings(upstreams=[stub], database_url=f"sqlite:///{workdir}/gw.db", admin_key=ADMIN,
                               health_interval=3600, key_cache_seconds=3600)  # nothing periodic amid the requests
    app = create_gateway_app(settings)
    async with app.router.lifespan_context(app) as state:
        status, created = await _call(app, state, "POST", "/admin/keys", json.dumps({"name": "bench"}).encode(), ADMIN)
        assert status == 201, created
        key = json.loads(created)["key"]
        for _ in range(200):  # warm: connections, caches, first-use code paths
            await _call(app, state, "POST", "/v1/rerank", BODY, key)
        print("ready", flush=True)
        while line := (await asyncio.to_thread(sys.stdin.readline)).strip():
            if line.startswith("count "):  # Python and C function calls per request: the same on any load
                requests, calls = int(line.split()[1]), [0]
                token = _COUNTING.set(True)
                sys.setprofile(partial(_count_call, calls))  # the event loop's thread
                for _ in range(requests):
                    await _call(app, state, "POST", "/v1/rerank", BODY, key)
                sys.setprofile(None)
                _COUNTING.reset(token)
                print(calls[0] / requests, flush=True)
                continue
            requests = int(line)
            started = time.process_time()
            for _ in range(requests):
                status, answer = await _call(app, state, "POST", "/v1/rerank", BODY, key)
                assert status == 200, answer
            print((time.process_time() - started) / requests * 1e6, flush=True)


def _primitives() -> dict[str, float]:
    """Nanoseconds per call of what an instrumented line runs, off and on."""
    import timeit

    from opentelemetry import trace

    from rerankd.observability import tracing

    n = 50_000
    headers: dict[str, str] = {}

    def per_call(stmt: Any, number: int = n) -> float:
        return round(min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e9, 1)

    def ours() -> None:
        with tracing.span("x"):
            pass

    noop = trace.NoOpTracer()

    def api_noop() -> None:
        with noop.start_as_current_span("x"):
            pass

    out = {"span_off_ns": per_call(ours), "inject_off_ns": per_call(lambda: tracing.inject(headers)),
           "api_noop_tracer_span_ns": per_call(api_noop, 10_000)}
    from opentelemetry.sdk.trace import TracerProvider

    sdk = TracerProvider().get_tracer("bench")  # recording, no processor: the span's own cost, no export

    def recording() -> None:
        with sdk.start_as_current_span("x"):
            pass

    out["sdk_recording_span_ns"] = per_call(recording, 2_000)
    return out


def _child(args: argparse.Namespace) -> None:
    asyncio.run(_serve_rounds(args.stub, args.workdir))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=False, help="the src/ directory of the code before")
    parser.add_argument("--requests", type=int, default=50, help="requests per round")
    parser.add_argument("--rounds", type=int, default=30, help="rounds per source tree, alternating")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "tracing_overhead.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stub", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    sys.path.insert(0, str(ROOT / "bench"))
    from gateway_overhead import STUB, free_port, wait_ready

    trees = {"after": ROOT / "src", **({"before": args.before.resolve()} if args.before else {})}
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        (Path(tmp) / "stub.py").write_text(STUB)
        stub_proc = subprocess.Popen([sys.executable, str(Path(tmp) / "stub.py"), str(port)])
        try:
            stub = f"http://127.0.0.1:{port}"
            wait_ready(stub + "/ready")
            runs: dict[str, list[float]] = {name: [] for name in trees}
            children = {}
            for name, src in trees.items():  # both run at once: the machine's load hits them alike
                workdir = Path(tmp) / name
                workdir.mkdir()
                children[name] = subprocess.Popen(
                    [sys.executable, __file__, "--child", "--stub", stub, "--workdir", str(workdir)],
                    env={**os.environ, "PYTHONPATH": str(src)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    text=True)
            try:
                for child in children.values():
                    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
                names = list(children)
                for i in range(args.rounds):
                    # Alternating rounds, the order swapped each time (ABBA): drift in load cancels out.
                    for name in names if i % 2 == 0 else names[::-1]:
                        child = children[name]
                        assert child.stdin is not None and child.stdout is not None
                        child.stdin.write(f"{args.requests}\n")
                        child.stdin.flush()
                        runs[name].append(float(child.stdout.readline()))
                    print(f"round {i}: " + ", ".join(f"{n} {runs[n][-1]:.0f} us" for n in names), file=sys.stderr)
                calls = {}
                for name, child in children.items():
                    assert child.stdin is not None and child.stdout is not None
                    child.stdin.write("count 200\n")
                    child.stdin.flush()
                    calls[name] = round(float(child.stdout.readline()), 1)
            finally:
                for child in children.values():
                    child.kill()
                    child.wait(10)
        finally:
            stub_proc.terminate()
            stub_proc.wait(10)
    sys.path.insert(0, str(ROOT / "src"))
    report: dict[str, Any] = {
        "command": " ".join(["python", "bench/tracing_overhead.py", *sys.argv[1:]]),
        "requests_per_round": args.requests,
        "request_path_cpu_us": {name: {"median": round(statistics.median(v), 1), "min": round(min(v), 1),
                                   "max": round(max(v), 1), "rounds": [round(x, 1) for x in v]}
                            for name, v in runs.items()},
        "function_calls_per_request": calls,
        "primitives": _primitives(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    if "before" in runs:
        differences = [a - b for a, b in zip(runs["after"], runs["before"], strict=True)]
        report["paired_difference_cpu_us"] = {"median": round(statistics.median(differences), 1),
                                              "quartiles": [round(q, 1) for q in statistics.quantiles(differences)]}
    write_result(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
