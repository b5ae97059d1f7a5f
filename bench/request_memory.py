"""Resident memory of a real ``rerankd serve`` before, during and after one large in-limit request.

Why: a request of 1000 long documents raised a replica's RSS by gigabytes, and it stayed high after the
answer. This prints RSS idle, the peak while the request runs, and the level right after it and after a
second of idle, so a change to what the server keeps (or gives back to the OS) shows as a number.

    python bench/request_memory.py --model /work/models/tiny --docs 1000 --words 700
    python bench/request_memory.py --model /work/models/tiny --malloc glibc
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import httpx

from benchlib.serve import rss_mb, serving


def sample(pid: int, done: threading.Event, peaks: list[float]) -> None:
    """Until ``done``, keep the highest RSS of ``pid`` in ``peaks[0]``."""
    while not done.is_set():
        peaks[0] = max(peaks[0], rss_mb(pid))
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="/work/models/tiny")
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--words", type=int, default=700, help="words per document (~1.3 tokens each)")
    parser.add_argument("--malloc", default="auto", help="rerankd serve --malloc")
    parser.add_argument("--repeat", type=int, default=2, help="large requests, one after another")
    args = parser.parse_args()

    body = {"query": "what is measured", "return_documents": False,
            "documents": [f"document {i} " + "lorem ipsum dolor " * (args.words // 3) for i in range(args.docs)]}
    with serving(args.model, "--device", "cpu", "--malloc", args.malloc) as served:
        httpx.post(f"{served.url}/v1/rerank", json={"query": "q", "documents": ["warm"]}, timeout=60)
        report: dict[str, object] = {"docs": args.docs, "words": args.words, "malloc": args.malloc,
                                     "idle_mb": round(rss_mb(served.pid))}
        runs = []
        for _ in range(args.repeat):
            done = threading.Event()
            peaks = [0.0]
            sampler = threading.Thread(target=sample, args=(served.pid, done, peaks), daemon=True)
            sampler.start()
            started = time.perf_counter()
            response = httpx.post(f"{served.url}/v1/rerank", json=body, timeout=900)
            seconds = time.perf_counter() - started
            done.set()
            sampler.join()
            after = rss_mb(served.pid)
            time.sleep(1.0)
            runs.append({"status": response.status_code, "seconds": round(seconds, 1),
                         "tokens": response.json().get("usage", {}).get("prompt_tokens"),
                         "peak_mb": round(peaks[0]), "after_mb": round(after), "after_1s_mb": round(rss_mb(served.pid))})
        report["runs"] = runs
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
