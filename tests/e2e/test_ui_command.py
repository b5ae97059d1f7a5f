"""``rerankd ui`` as a real process: its flags and ``RERANKD_*`` variables reach the page and the API calls."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from support import free_port, wait_until

pytestmark = pytest.mark.e2e


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_ui(log: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """``rerankd ui`` as a process on a free port; returns once its ``/config`` answers (the page is served)."""
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "rerankd.cli", "ui", "--port", str(port), *args],
                                env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})},
                                stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is not None or _answers(base + "/config"), 90, "the UI to serve /config")
    except AssertionError:
        proc.kill()
        raise
    assert proc.poll() is None, log.read_text()
    return proc, base


def test_rerankd_ui_serves_the_page_with_the_key_from_the_environment(
    tmp_path: Path, ui_backend_url: str, ui_api_key: str
) -> None:
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    log = tmp_path / "ui.log"
    proc, base = start_ui(log, "--timeout", "30", "--max-corpus", "2",
                          env={"RERANKD_GATEWAY_URL": ui_backend_url, "RERANKD_API_KEY": ui_api_key})
    try:
        for path in ("/", "/config"):
            assert ui_api_key not in httpx.get(base + path, timeout=10).text
        # A ranking succeeds only if RERANKD_API_KEY reached the upstream call (the backend demands it).
        client = Client(base, verbose=False, analytics_enabled=False, download_files=False)
        table, _, details = client.predict(
            "capital of France", "", "Paris is the capital of France.\nBerlin is in Germany.", None, 0,
            api_name="/rerank")
        assert details["documents"] == 2 and len(table["data"]) == 2
        # The search tab embeds at the same gateway with the same key by default; --max-corpus reaches the page.
        table, _, details = client.predict("capital of France", "", "Paris\nBerlin", None, 1, api_name="/search")
        assert details["corpus"] == 2 and details["embedding"]["model"] == "tiny-embedder" and len(table["data"]) == 1
        with pytest.raises(AppError, match="at most 2"):
            client.predict("q", "", "a\nb\nc", None, 1, api_name="/search")
        assert "listening on http://127.0.0.1:" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_rerankd_ui_exits_cleanly_and_promptly_on_a_stop_signal(tmp_path: Path, sig: signal.Signals) -> None:
    # As PID 1 in a container, a SIGTERM the process does not handle itself does nothing: the UI then sat
    # out the whole grace period until SIGKILL. It must close its server and exit 0 at once instead.
    log = tmp_path / "ui.log"
    proc, base = start_ui(log, "--gateway-url", "http://127.0.0.1:9")
    proc.send_signal(sig)
    try:
        status = proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
        pytest.fail(f"rerankd ui still running 10 s after {sig.name}: {log.read_text()}")
    assert status == 0, log.read_text()
    assert f"{sig.name} received, stopped" in log.read_text()
    assert not _answers(base + "/config")
