"""How long one ledger flush stalls the gateway's event loop (the requests in flight wait that long).

A ticker sleeps 0.5 ms at a time on the loop and records how late it wakes while the ledger inserts batches of
``--rows`` usage rows; the worst lag per insert is the stall.

    python bench/ledger_loop_stall.py                                   # a fresh SQLite file
    python bench/ledger_loop_stall.py --database-url postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from rerankd.gateway.db import create_engine_for, init_schema
from rerankd.gateway.ledger import UsageEntry, UsageLedger


async def measure(url: str, rows: int, batches: int) -> tuple[list[float], list[float]]:
    engine = create_engine_for(url)
    await init_schema(engine)
    ledger = UsageLedger(engine)
    lags: list[float] = []
    running = True

    async def ticker() -> None:
        while running:
            started = time.perf_counter()
            await asyncio.sleep(0.0005)
            lags.append(time.perf_counter() - started - 0.0005)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0.2)
    walls, stalls = [], []
    for _ in range(batches):
        batch = [UsageEntry(request_id=uuid.uuid4().hex, key_id="bench", model="m", documents=2, tokens=150,
                            latency_ms=1.0, status=200, route="/v1/rerank", upstream="http://127.0.0.1:1")
                 for _ in range(rows)]
        lags.clear()
        started = time.perf_counter()
        await ledger._insert(batch)  # what the background writer does per batch
        walls.append((time.perf_counter() - started) * 1000)
        stalls.append(max(lags or [0.0]) * 1000)
        await asyncio.sleep(0.05)
    running = False
    await task
    await engine.dispose()
    return walls, stalls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database-url", default=None, help="default: a new SQLite file in a temporary folder")
    p.add_argument("--rows", type=int, default=250)
    p.add_argument("--batches", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'ledger.db'}"
        walls, stalls = asyncio.run(measure(url, args.rows, args.batches))
    print(f"{args.batches} inserts of {args.rows} rows: wall median {statistics.median(walls):.1f} ms; "
          f"loop stall median {statistics.median(stalls):.2f} ms, max {max(stalls):.2f} ms")


if __name__ == "__main__":
    main()
