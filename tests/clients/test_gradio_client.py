"""``gradio_client`` against the web UI of ``rerankd up`` (``rerankd ui``): its named endpoint ``/rerank``, and
the page's own error sentences for a UI started with a wrong key and with a rate-limited one."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from clients.common import DOCUMENTS, QUERY, RATE_LIMITED, WRONG_KEY, Stack, gateway_message
from support import free_port, wait_until


def rank(ui_url: str) -> tuple[dict[str, object], str, dict[str, object]]:
    table, summary, details = Client(ui_url, verbose=False).predict(
        query=QUERY, instruction="", documents="\n".join(DOCUMENTS), documents_file=None, top_n=0,
        api_name="/rerank")
    return table, summary, details


@contextmanager
def ui_with_key(stack: Stack, key: str, log_dir: Path) -> Iterator[str]:
    """Another ``rerankd ui`` in front of the same gateway, holding ``key``."""
    port = free_port()
    env = {**os.environ, "RERANKD_API_KEY": key}
    with (log_dir / f"ui-{port}.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "rerankd.cli", "ui", "--gateway-url", stack.gateway,
                                 "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"

    def up() -> bool:
        assert proc.poll() is None, (log_dir / f"ui-{port}.log").read_text(errors="replace")
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, 120, "rerankd ui to answer", interval=0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def test_predict_ranks_like_the_api(stack: Stack) -> None:
    table, summary, details = rank(stack.ui)
    direct = httpx.post(f"{stack.gateway}/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS},
                        headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=30).json()
    assert table["headers"] == ["rank", "score", "score bar", "index", "document"]
    rows = table["data"]
    assert isinstance(rows, list)
    assert [row[3] for row in rows] == [r["index"] for r in direct["results"]]
    for row, result in zip(rows, direct["results"], strict=True):
        assert row[1] == pytest.approx(result["relevance_score"], abs=1e-6)
        assert row[4] == DOCUMENTS[result["index"]]
    assert details["documents"] == len(DOCUMENTS)
    assert f"{len(DOCUMENTS)} of {len(DOCUMENTS)} documents" in summary
    assert details["model"] == direct["model"]


def test_a_ui_with_a_wrong_key_shows_the_gateways_message(stack: Stack, tmp_path: Path) -> None:
    with ui_with_key(stack, WRONG_KEY, tmp_path) as url, pytest.raises(AppError) as caught:
        rank(url)
    assert "401" in caught.value.message
    assert gateway_message(stack, WRONG_KEY) in caught.value.message


def test_a_ui_with_a_rate_limited_key_shows_the_gateways_message(stack: Stack, tmp_path: Path) -> None:
    # The UI starts first: the key's one request of the minute is spent just before the call (as limited_key does).
    key = stack.key(rpm=1)
    with ui_with_key(stack, key, tmp_path) as url:
        assert httpx.post(f"{stack.gateway}/v1/rerank", json={"query": "q", "documents": ["a"]},
                          headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code == 200
        with pytest.raises(AppError) as caught:
            rank(url)
    assert "Rate limited (429)" in caught.value.message
    assert RATE_LIMITED in caught.value.message
