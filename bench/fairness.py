"""How long 1-document requests wait while another client's 1000-document request is being scored.

A real ``rerankd serve``: one client sends ``--rounds`` large requests one after another while a second sends
1-document requests in a loop; the small requests' p50/p99 latency (only those sent while a large one was in
flight) is printed with the same figures for the small requests alone, and of ``/health`` (the event loop's stalls) while a large one runs. Under first-in-first-out batching a
small request waits for every row of the large one; with round-robin turns it runs in the next batch.

    python bench/fairness.py --model /work/models/tiny
    python bench/fairness.py --model /work/models/qwen3-reranker-0.6b-random --docs 200 --words 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time

import httpx

from benchlib.serve import serving


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(latencies: list[float]) -> dict[str, float | int]:
    return {"n": len(latencies), "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 1), "max_ms": round(max(latencies) * 1000, 1)}


def client_loop(url: str, body: object | None, stop: threading.Event, spans: list[tuple[float, float]]) -> None:
    """Until ``stop``, POST ``body`` to ``url`` (GET without one) back to back; each (start, end) lands in ``spans``."""
    with httpx.Client(timeout=600) as client:
        while not stop.is_set():
            started = time.perf_counter()
            response = client.get(url) if body is None else client.post(url, json=body)
            assert response.status_code == 200, response.text[:300]
            spans.append((started, time.perf_counter()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="/work/models/tiny")
    parser.add_argument("--docs", type=int, default=1000, help="documents of the large request")
    parser.add_argument("--words", type=int, default=300, help="words per document of the large request")
    parser.add_argument("--rounds", type=int, default=2, help="large requests, one after another")
    parser.add_argument("--alone", type=int, default=30, help="small requests measured with nothing else running")
    args = parser.parse_args()

    large = {"query": "large", "return_documents": False,
             "documents": [f"document {i} " + "lorem ipsum dolor " * (args.words // 3) for i in range(args.docs)]}
    small = {"query": "small", "documents": ["one short document"], "return_documents": False}
    spans: list[tuple[float, float]] = []
    health_spans: list[tuple[float, float]] = []
    large_spans: list[tuple[float, float]] = []
    with serving(args.model, "--device", "cpu") as served:
        stop = threading.Event()
        clients = [threading.Thread(target=client_loop, args=(f"{served.url}/v1/rerank", small, stop, spans)),
                   threading.Thread(target=client_loop, args=(f"{served.url}/health", None, stop, health_spans))]
        for client_thread in clients:
            client_thread.start()
        try:
            while len(spans) < args.alone:
                time.sleep(0.01)
            with httpx.Client(timeout=900) as client:
                for _ in range(args.rounds):
                    started = time.perf_counter()
                    response = client.post(f"{served.url}/v1/rerank", json=large)
                    large_spans.append((started, time.perf_counter()))
                    assert response.status_code == 200, response.text[:300]
        finally:
            stop.set()
            for client_thread in clients:
                client_thread.join()

    def overlaps(span: tuple[float, float]) -> bool:
        return any(span[0] < end and start < span[1] for start, end in large_spans)

    during = [end - start for start, end in spans if overlaps((start, end))]
    alone = [end - start for start, end in spans if not overlaps((start, end))]
    large_seconds = [end - start for start, end in large_spans]
    health = [end - start for start, end in health_spans if overlaps((start, end))]
    print(json.dumps({"docs": args.docs, "words": args.words, "rounds": args.rounds,
                      "large_seconds": [round(s, 2) for s in large_seconds],
                      "small_alone": summary(alone), "small_during_large": summary(during),
                      "health_during_large": summary(health)},
                     indent=2))


if __name__ == "__main__":
    main()
