"""Start-up of ``rerankd serve``: time to ``/ready``, the first request's latency, and (``--compile auto``)
the time until the compiled kernels serve, for each ``--compile`` mode, with a cold or warm inductor cache.

Each run is a fresh server process on a free port; the load average is printed with every figure (the
machine these figures come from is shared). Usage::

    python bench/startup.py --model /work/models/tiny --runs off auto:cold on:fill auto:warm on:warm
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import httpx

BODY = {"query": "where do giant pandas live", "documents": [f"Pandas live in bamboo forests, note {i}. " * (i + 1)
                                                              for i in range(8)]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gauge(url: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("rerankd_compiled_kernels_ready "):
            return float(line.split()[-1])
    return 0.0


def one_run(model: str, mode: str, cache_dir: str, dtype: str, log_dir: str) -> dict[str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache_dir)
    log = open(os.path.join(log_dir, f"serve-{mode}-{port}.log"), "wb")  # noqa: SIM115 - lives as long as the process
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "rerankd.cli", "serve", "--model", model, "--device", "cpu",
                             "--dtype", dtype, "--compile", mode, "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    out: dict[str, float] = {"load_start": os.getloadavg()[0]}
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; see {log.name}")
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        out["ready_s"] = time.perf_counter() - started
        t = time.perf_counter()
        assert httpx.post(f"{url}/v1/rerank", json=BODY, timeout=600).status_code == 200
        out["first_request_s"] = time.perf_counter() - t
        if mode == "auto":
            while gauge(url) != 1.0:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited; see {log.name}")
                time.sleep(0.2)
            out["compiled_after_s"] = time.perf_counter() - started
        t = time.perf_counter()
        assert httpx.post(f"{url}/v1/rerank", json=BODY, timeout=600).status_code == 200
        out["request_after_s"] = time.perf_counter() - t
        out["load_end"] = os.getloadavg()[0]
        return out
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--runs", nargs="+", default=["off", "auto:cold", "on:warm", "auto:warm"],
                   help="MODE[:cold|fill|warm]: cold = an empty inductor cache of its own; fill and warm = the one "
                        "cache the runs share (fill: the run that fills it)")
    args = p.parse_args()
    warm_dir = tempfile.mkdtemp(prefix="rerankd-inductor-warm-")
    log_dir = tempfile.mkdtemp(prefix="rerankd-startup-logs-")
    print(f"{'run':10s} {'ready s':>8s} {'1st req s':>9s} {'compiled s':>10s} {'req after s':>11s}  load avg")
    for run in args.runs:
        mode, _, cache = run.partition(":")
        cache_dir = tempfile.mkdtemp(prefix="rerankd-inductor-cold-") if cache == "cold" else warm_dir
        r = one_run(args.model, mode, cache_dir, args.dtype, log_dir)
        if cache == "cold":
            shutil.rmtree(cache_dir, ignore_errors=True)
        compiled = f"{r['compiled_after_s']:10.1f}" if "compiled_after_s" in r else f"{'-':>10s}"
        print(f"{run:10s} {r['ready_s']:8.1f} {r['first_request_s']:9.2f} {compiled} {r['request_after_s']:11.2f}"
              f"  {r['load_start']:.1f} -> {r['load_end']:.1f}", flush=True)
    shutil.rmtree(warm_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
