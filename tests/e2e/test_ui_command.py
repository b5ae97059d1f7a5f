"""``rerankd ui`` as a real process: its flags and ``RERANKD_*`` variables reach the page and the API calls."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from support import free_port

pytestmark = pytest.mark.e2e


def test_rerankd_ui_serves_the_page_with_the_key_from_the_environment(
    tmp_path: Path, ui_backend_url: str, ui_api_key: str
) -> None:
    from gradio_client import Client

    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False",
           "RERANKD_GATEWAY_URL": ui_backend_url, "RERANKD_API_KEY": ui_api_key}
    log = tmp_path / "ui.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rerankd.cli", "ui", "--port", str(port), "--timeout", "30"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(base + "/config", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)

        for path in ("/", "/config"):
            assert ui_api_key not in httpx.get(base + path, timeout=10).text
        # A ranking succeeds only if RERANKD_API_KEY reached the upstream call (the backend demands it).
        table, _, details = Client(base, verbose=False, analytics_enabled=False, download_files=False).predict(
            "capital of France", "", "Paris is the capital of France.\nBerlin is in Germany.", None, 0,
            api_name="/rerank")
        assert details["documents"] == 2 and len(table["data"]) == 2
        assert "listening on http://127.0.0.1:" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
