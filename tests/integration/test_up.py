"""`rerankd up` as a user runs it: two replicas + gateway + UI, a rerank with the printed key, a crashed
replica restarted, and SIGTERM leaving no process behind."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from otlp_receiver import OtlpReceiver, otlp_receiver
from rerankd.deployment.up import read_banner
from support import free_port

pytestmark = pytest.mark.timeout(300)


def consecutive_free_ports(n: int) -> int:
    for _ in range(100):
        base = free_port()
        try:
            sockets = []
            for port in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", port))
                sockets.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no run of free ports")


@pytest.fixture
def traces() -> Iterator[tuple[str, OtlpReceiver]]:
    """An OTLP/HTTP receiver for the stack's spans: its URL and what it received."""
    with otlp_receiver() as receiving:
        yield receiving


def test_up_serves_through_the_gateway_restarts_a_dead_replica_and_stops_cleanly(
        tiny_model_dir: Path, tmp_path: Path, traces: tuple[str, OtlpReceiver]) -> None:
    base = consecutive_free_ports(2)
    gateway_port, ui_port = free_port(), free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    env.pop("RERANKD_API_KEY", None)
    endpoint, receiver = traces
    proc = subprocess.Popen(
        [sys.executable, "-m", "rerankd.cli", "up", "--model", str(tiny_model_dir), "--replicas", "2",
         "--device", "cpu", "--dtype", "float32", "--max-model-len", "256", "--data-dir", str(tmp_path / "data"),
         "--gateway-port", str(gateway_port), "--ui-port", str(ui_port), "--server-base-port", str(base),
         "--otlp-endpoint", endpoint],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        whole: dict[str, str] = {}
        printed = read_banner(proc, timeout=240, whole=whole)
        key = printed["API key"]
        assert key.startswith("rk-")
        assert printed["gateway"] == f"http://127.0.0.1:{gateway_port}"
        assert printed["web UI"] == f"http://127.0.0.1:{ui_port}"
        gateway = printed["gateway"]
        auth = {"Authorization": f"Bearer {key}"}
        answer = httpx.post(f"{gateway}/v1/rerank", json={"query": "capital of France",
                                                           "documents": ["Paris", "Berlin"]}, headers=auth, timeout=30)
        assert answer.status_code == 200, answer.text
        assert {r["index"] for r in answer.json()["results"]} == {0, 1}
        # --otlp-endpoint reaches the gateway and the replicas: the request's spans come from both.
        receiver.wait_for(lambda spans: {"rerankd-gateway", "rerankd-server"} <= {s.service for s in spans}, 60,
                          "spans from the gateway and a replica of `rerankd up --otlp-endpoint`")
        # The gateway's model table names the served model; a vendor name reaches it too (the default route).
        models = httpx.get(f"{gateway}/v1/models", headers=auth, timeout=10).json()["data"]
        assert [m["id"] for m in models] == [tiny_model_dir.name]
        cohere_style = httpx.post(f"{gateway}/v1/rerank", json={"model": "rerank-v3.5", "query": "q",
                                                                 "documents": ["a"]}, headers=auth, timeout=30)
        assert cohere_style.status_code == 200, cohere_style.text
        # `up` prints the exact command that makes another key, and the running gateway accepts that key.
        data_dir = tmp_path / "data"
        assert whole["more keys"] == f"rerankd keys create --name NAME --data-dir {data_dir.resolve()}"
        made = subprocess.run([sys.executable, "-m", "rerankd.cli",
                               *whole["more keys"].replace("NAME", "second-key").split()[1:]],
                              capture_output=True, text=True, env=env, timeout=60, check=True)
        second = made.stdout.strip()
        assert second.startswith("rk-") and second != key, made.stdout
        answer = httpx.post(f"{gateway}/v1/rerank", json={"query": "q", "documents": ["a"]},
                            headers={"Authorization": f"Bearer {second}"}, timeout=30)
        assert answer.status_code == 200, answer.text  # 401 when the key went to another database
        assert str(data_dir.resolve() / "gateway.db") in made.stderr
        assert httpx.get(printed["web UI"], timeout=10).status_code == 200
        assert oct((tmp_path / "data" / "api-key").stat().st_mode & 0o777) == "0o600"
        # The replicas are reachable only through the gateway: a local client without the replica key is refused
        # (and so cannot skip the gateway's keys, limits and ledger, or claim another tenant's batching turns).
        direct = httpx.post(f"http://127.0.0.1:{base}/v1/rerank", json={"query": "q", "documents": ["a"]},
                            headers=auth, timeout=30)
        assert direct.status_code == 401, direct.text
        assert oct((tmp_path / "data" / "replica-key").stat().st_mode & 0o777) == "0o600"

        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 4  # two servers, the gateway, the UI
        replica = next(c for c in children if f"--port {base} " in " ".join(c.cmdline()) + " ")
        assert printed["replica 1"] == f"http://127.0.0.1:{base}"  # replica 1 listens on the base port
        replica.kill()  # a crash: the supervisor must bring it back on the same port
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "crashed replica was not restarted"
            time.sleep(0.5)
        for _ in range(5):  # and nothing failed meanwhile for clients of the gateway
            assert httpx.post(f"{gateway}/v1/rerank", json={"query": "q", "documents": ["a"]},
                              headers=auth, timeout=30).status_code == 200

        everyone = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
        proc.send_signal(signal.SIGTERM)
        proc.wait(90)
        deadline = time.monotonic() + 10
        while any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in everyone):
            assert time.monotonic() < deadline, "processes left behind after SIGTERM"
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_signal_landing_while_the_stop_event_is_locked_does_not_hang() -> None:
    """A second Ctrl-C can arrive while the main thread holds the stop event's lock (inside ``wait()`` or the
    first handler's ``set()``). Setting the event in the handler itself then blocked forever on that lock."""
    from rerankd.deployment.up import stop_on_signals

    stop = threading.Event()
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        handler = stop_on_signals(stop)
        assert signal.getsignal(signal.SIGINT) is handler and signal.getsignal(signal.SIGTERM) is handler
        with stop._cond:  # type: ignore[attr-defined]  # this thread holds the lock, as in Event.wait/set
            handler(signal.SIGINT, None)  # must return at once
            assert not stop.is_set()  # the helper thread waits for the lock...
        assert stop.wait(5)  # ...and sets the event once it is free
    finally:
        signal.signal(signal.SIGINT, before[0])
        signal.signal(signal.SIGTERM, before[1])


def test_up_with_an_embedding_model_serves_both_through_one_gateway_with_one_key(
        tiny_model_dir: Path, embed_model_dir: Path, tmp_path: Path) -> None:
    """``up --model <reranker> --embedding-model <embedder>``: two pools behind one gateway, one key for both,
    the OpenAI SDK's ``embeddings.create`` unchanged."""
    import openai

    base = consecutive_free_ports(2)
    gateway_port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RERANKD_COMPILE": "off"}
    env.pop("RERANKD_API_KEY", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "rerankd.cli", "up", "--model", str(tiny_model_dir), "--embedding-model",
         str(embed_model_dir), "--no-ui", "--device", "cpu", "--dtype", "float32", "--max-model-len", "256",
         "--compile", "off", "--data-dir", str(tmp_path / "data"), "--gateway-port", str(gateway_port),
         "--server-base-port", str(base)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    try:
        printed = read_banner(proc, timeout=280)
        key, gateway = printed["API key"], printed["gateway"]
        assert printed["replica 1"] == f"http://127.0.0.1:{base}"
        assert printed["replica 2"] == f"http://127.0.0.1:{base + 1}"  # the embedder, after the reranker
        auth = {"Authorization": f"Bearer {key}"}
        ranked = httpx.post(f"{gateway}/v1/rerank", json={"query": "capital of France",
                                                           "documents": ["Paris", "Berlin"]}, headers=auth, timeout=60)
        assert ranked.status_code == 200, ranked.text
        assert {r["index"] for r in ranked.json()["results"]} == {0, 1}
        client = openai.OpenAI(base_url=f"{gateway}/v1", api_key=key, max_retries=0, timeout=60)
        vectors = client.embeddings.create(model=embed_model_dir.name, input=["Paris", "Berlin", "Rome"])
        assert [d.index for d in vectors.data] == [0, 1, 2]
        assert len({len(d.embedding) for d in vectors.data}) == 1 and vectors.usage.prompt_tokens > 0
        # A name the table does not know reaches the default pool of the route's task, never the other pool.
        default_route = client.embeddings.create(model="text-embedding-3-small", input="Paris")
        assert default_route.data[0].embedding == pytest.approx(vectors.data[0].embedding, abs=1e-5)
        models = httpx.get(f"{gateway}/v1/models", headers=auth, timeout=10).json()["data"]
        assert {(m["id"], m["task"]) for m in models} == {(tiny_model_dir.name, "rerank"),
                                                          (embed_model_dir.name, "embed")}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
