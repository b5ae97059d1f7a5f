"""The same request gets bit-identical scores from a real server, whatever other traffic runs beside it.

Issue 22: on CPU, bf16, ``--compile auto``, one N:N ``/v1/score`` request took two answers, because a
pair's score moved with the other pairs of its forward pass. Here a ``rerankd serve`` process (bf16,
compiled kernels built in the background, ``--batch-invariant on``) gets the same request 20 times,
each time sent together with three other requests of other sizes, and every answer must be the same bits.
The test also checks, from the server's own batch metrics, that the target really shared forward passes with
other requests (else it would prove nothing).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from support import metric_value, spawn_replica, wait_until

pytestmark = pytest.mark.timeout(1200)

TARGET = {"text_1": ["what is a panda?", "how tall is everest"],
          "text_2": ["The giant panda is a bear species endemic to China.",
                     "Mount Everest is 8849 metres high, the tallest mountain above sea level."]}
OTHERS = [
    {"query": "where do pandas live", "documents": ["Pandas live in bamboo forests. " * k for k in (1, 4, 9, 2, 6)]},
    {"text_1": "how tall is everest", "text_2": ["Everest is tall.", "K2 is the second highest. " * 12]},
    {"query": "rivers of china", "documents": [f"The river number {i} flows east. " * (i % 5 + 1) for i in range(12)]},
]


def _compiled_kernels_ready(url: str) -> bool:
    """The gauge, read patiently: while inductor traces in the background thread it shares the GIL with the
    event loop, and on a loaded machine a scrape can take longer than httpx's default 5 s."""
    try:
        response = httpx.get(f"{url}/metrics", timeout=60)
    except httpx.TimeoutException:
        return False
    return "rerankd_compiled_kernels_ready 1.0" in response.text.splitlines()


def _batches_shared(url: str) -> float:
    """Forward passes that took rows of more than one request."""
    total = metric_value(url, "rerankd_batch_requests_count")
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith('rerankd_batch_requests_bucket{le="1.0"}'):
            return total - float(line.split()[-1])
    return 0.0


async def _rounds(url: str, rounds: int) -> list[list[float]]:
    answers = []
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        for i in range(rounds):
            others = [client.post("/v1/score" if "text_1" in body else "/v1/rerank", json=body)
                      for body in OTHERS[i % 3:] + OTHERS[:i % 3]]  # a different order each round
            target = client.post("/v1/score", json=TARGET)
            responses = await asyncio.gather(*others[:2], target, *others[2:])
            assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
            answers.append([d["score"] for d in responses[2].json()["data"]])
    return answers


def test_the_same_request_gets_the_same_scores_under_other_traffic(tiny_model_dir: Path, tmp_path: Path) -> None:
    replica = spawn_replica(tiny_model_dir, tmp_path, "--dtype", "bfloat16", "--compile", "auto",
                            "--batch-invariant", "on", "--max-batch-tokens", "2048")
    try:
        replica.wait_ready()
        # Ready at once; the compiled kernels come later. Their swap changes the numbers once (another kernel
        # path), so the comparison starts after it: the gauge says when.
        wait_until(lambda: _compiled_kernels_ready(replica.url), 900, "the compiled kernels to be swapped in")
        answers = asyncio.run(_rounds(replica.url, 20))
        assert _batches_shared(replica.url) >= 10, "the requests never shared a forward pass: nothing was tested"
        assert all(a == answers[0] for a in answers), answers
    finally:
        replica.stop()
