"""Does one request get one answer? The same N:N ``/v1/score`` request against a running server, first alone
(sequentially), then from several concurrent clients, half of them sending other requests beside it.

Prints each distinct answer with how often it came. Usage (a server already running)::

    rerankd serve --model /work/models/qwen3-reranker-0.6b-random --dtype bfloat16 --port 18932 &
    python bench/determinism.py --url http://127.0.0.1:18932 --alone 8 --clients 4 --rounds 4
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os

import httpx

TARGET = {"text_1": ["what is a panda?", "how tall is everest"],
          "text_2": ["The giant panda is a bear species endemic to China.",
                     "Mount Everest is 8849 metres high, the tallest on earth."]}
OTHER = {"query": "where do pandas live",
         "documents": ["Pandas live in the mountains of central China, in bamboo forests." * k for k in (1, 3, 6)]}


async def run(url: str, alone: int, clients: int, rounds: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        seen: collections.Counter[tuple[float, ...]] = collections.Counter()
        for _ in range(alone):
            r = (await client.post("/v1/score", json=TARGET)).json()
            seen[tuple(d["score"] for d in r["data"])] += 1
        print(f"alone, {alone} requests one after another (load average {os.getloadavg()[0]:.1f}):")
        for answer, n in seen.items():
            print(f"  {n} x {answer}")

        busy: collections.Counter[tuple[float, ...]] = collections.Counter()

        async def one(i: int) -> None:
            for _ in range(rounds):
                if i % 2:
                    await client.post("/v1/rerank", json=OTHER)
                    continue
                r = (await client.post("/v1/score", json=TARGET)).json()
                busy[tuple(d["score"] for d in r["data"])] += 1

        await asyncio.gather(*(one(i) for i in range(clients)))
        print(f"{clients} concurrent clients, half of them sending other requests "
              f"(load average {os.getloadavg()[0]:.1f}):")
        for answer, n in busy.items():
            print(f"  {n} x {answer}")
        print(f"distinct answers overall: {len(set(seen) | set(busy))}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--alone", type=int, default=8)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--rounds", type=int, default=4)
    args = p.parse_args()
    asyncio.run(run(args.url, args.alone, args.clients, args.rounds))


if __name__ == "__main__":
    main()
