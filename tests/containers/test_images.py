"""Each image alone, as built by tests/containers/run: server-cpu, gateway and UI on one Docker network.

For each: /health, /ready, a real request (a rerank with the tiny model mounted read-only; the UI's page and a
rerank through it),
its own HEALTHCHECK going healthy, the user it runs as, the read-only root filesystem (and dropped capabilities)
the Kubernetes manifests ask for, and `docker stop` ending it with status 0 inside the grace period (a process
still running at the end of it is killed: 137). Plus the defects the first build found: the compile fallback
(the image must compile its kernels), an unreadable model directory, and HEALTHCHECKs that ignored a changed
port. HEALTHCHECKs are run every 2 s here instead of the images' 15-30 s (`--health-interval`); their
command is the image's own.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from containerlib import (
    DOCUMENTS,
    IMAGES,
    MODEL,
    docker,
    get_ok,
    host_port,
    inspect,
    k8s_like,
    logs,
    wait_healthy,
    wait_until,
)

# The grace period compose.yaml (stop_grace_period) and the Kubernetes manifests give a container to stop.
GRACE_S = 40
HEALTH = ["--health-interval", "2s", "--health-start-period", "300s"]
SUFFIX = uuid.uuid4().hex[:6]
pytestmark = pytest.mark.timeout(1800)  # a cold server compiles its kernels: minutes on a loaded 2-core machine


def name(role: str) -> str:
    return f"ct-{role}-{SUFFIX}"


@pytest.fixture(scope="module")
def network() -> Iterator[str]:
    net = name("net")
    docker("network", "create", net)
    yield net
    docker("network", "rm", net, check=False)


def start(role: str, network: str, *options: str, command: tuple[str, ...] = (), image: str | None = None,
          port: int | None = None) -> str:
    container = name(role)
    published = ["-p", f"127.0.0.1::{port}"] if port else []
    docker("run", "-d", "--name", container, "--network", network, *HEALTH, *published, *options,
           image or IMAGES[role], *command)
    return container


def remove(container: str) -> None:
    docker("rm", "-f", "-v", container, check=False)


@pytest.fixture(scope="module")
def server(network: str) -> Iterator[str]:
    container = start("server", network, *k8s_like("server"), "-v", f"{MODEL}:/model:ro",
                      "-e", "RERANKD_MODEL=/model", "-e", "RERANKD_MAX_MODEL_LEN=512", port=8000)
    yield container
    remove(container)


@pytest.fixture(scope="module")
def server_url(server: str) -> str:
    url = f"http://127.0.0.1:{host_port(server, 8000)}"
    wait_until(lambda: get_ok(url + "/ready"), 1500, "the server's /ready", lambda: logs(server))
    return url


@pytest.fixture(scope="module")
def gateway(network: str, server: str) -> Iterator[str]:
    # The ledger on the emptyDir /tmp: the root filesystem is read-only, as on Kubernetes (which uses PostgreSQL).
    container = start("gateway", network, *k8s_like("gateway"), "-e", f"RERANKD_UPSTREAM=http://{server}:8000",
                      "-e", "RERANKD_DATABASE_URL=sqlite:////tmp/ledger.db", port=8080)
    yield container
    remove(container)


@pytest.fixture(scope="module")
def gateway_key(gateway: str) -> str:
    wait_until(lambda: get_ok(f"http://127.0.0.1:{host_port(gateway, 8080)}/health"), 120, "the gateway's /health",
               lambda: logs(gateway))
    out = docker("exec", gateway, "rerankd", "keys", "create", "--name", "ci", "--json").stdout
    return str(json.loads(out)["key"])


@pytest.fixture(scope="module")
def ui(network: str, gateway: str, gateway_key: str) -> Iterator[str]:
    container = start("ui", network, *k8s_like("ui"), "-e", f"RERANKD_GATEWAY_URL=http://{gateway}:8080",
                      "-e", f"RERANKD_API_KEY={gateway_key}", port=7860)
    yield container
    remove(container)


def rerank(url: str, key: str | None = None) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = httpx.post(url + "/v1/rerank", json={"query": "capital of France", "documents": DOCUMENTS},
                          headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert sorted(r["index"] for r in body["results"]) == [0, 1, 2]
    return body  # type: ignore[no-any-return]


def assert_non_root_on_a_read_only_root(container: str, deployment: str) -> None:
    config = inspect(container)
    assert config["Config"]["User"] == "10001:10001"
    assert docker("exec", container, "id", "-u").stdout.strip() == "10001"
    assert config["HostConfig"]["ReadonlyRootfs"] is True, "the Kubernetes manifest asks for a read-only root"
    denied = docker("exec", container, "sh", "-c", "touch /opt/rerankd/written", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr
    assert docker("exec", container, "sh", "-c", "touch /tmp/written").returncode == 0  # the emptyDir


def assert_stops_cleanly(container: str) -> None:
    docker("stop", "-t", str(GRACE_S), container, timeout=GRACE_S + 60)
    state = inspect(container)["State"]
    # 0: the process ended by itself on SIGTERM; Docker kills one still running after the grace period (137).
    assert state["ExitCode"] == 0 and not state["OOMKilled"], f"{state}\n{logs(container)[-3000:]}"


# ---------------------------------------------------------------- server-cpu


def test_server_answers_health_ready_and_a_rerank(server: str, server_url: str) -> None:
    assert get_ok(server_url + "/health")
    assert get_ok(server_url + "/ready")
    rerank(server_url)


def test_server_compiles_its_kernels_in_the_image(server: str, server_url: str) -> None:
    """The first build had no Python headers: torch.compile failed and the server fell back (1.6x slower)."""
    text = logs(server)
    assert "compiled kernels unavailable" not in text, text[-3000:]


def test_server_healthcheck_goes_healthy(server: str, server_url: str) -> None:
    wait_healthy(server)


def test_server_is_non_root_on_a_read_only_root(server: str, server_url: str) -> None:
    assert_non_root_on_a_read_only_root(server, "server")


@pytest.mark.parametrize("locked", ["model", "model/model.safetensors"])
def test_an_unreadable_model_is_permission_denied_and_a_failure(locked: str) -> None:
    """The first build logged "No such file or directory" and exited 0 for a model the user could not read."""
    locked_dir = Path(tempfile.mkdtemp(prefix="ct-locked-model-"))
    locked_dir.chmod(0o755)
    try:
        shutil.copytree(MODEL, locked_dir / "model")
        (locked_dir / locked).chmod(0o700 if locked == "model" else 0o600)  # root's: not uid 10001's
        proc = docker("run", "--rm", "-v", f"{locked_dir / 'model'}:/model:ro", "-e", "RERANKD_MODEL=/model",
                      IMAGES["server"], check=False, timeout=300)
    finally:
        shutil.rmtree(locked_dir)
    assert proc.returncode == 2, proc.stderr[-3000:]  # rerankd.server.command.EXIT_BAD_MODEL_PATH
    assert "permission denied" in proc.stderr
    assert "No such file or directory" not in proc.stderr


# ---------------------------------------------------------------- gateway


def test_gateway_answers_health_ready_and_a_rerank(gateway: str, gateway_key: str, server_url: str) -> None:
    url = f"http://127.0.0.1:{host_port(gateway, 8080)}"
    assert get_ok(url + "/health")
    wait_until(lambda: get_ok(url + "/ready"), 120, "the gateway's /ready", lambda: logs(gateway))
    rerank(url, gateway_key)
    assert httpx.post(url + "/v1/rerank", json={"query": "q", "documents": ["d"]}, timeout=30).status_code == 401


def test_gateway_healthcheck_goes_healthy(gateway: str, gateway_key: str) -> None:
    wait_healthy(gateway)


def test_gateway_is_non_root_on_a_read_only_root(gateway: str, gateway_key: str) -> None:
    assert_non_root_on_a_read_only_root(gateway, "gateway")


@pytest.mark.parametrize("moved_by", ["RERANKD_PORT", "--port"])
def test_healthcheck_follows_a_changed_port(network: str, server: str, moved_by: str) -> None:
    """The first build's HEALTHCHECKs probed a fixed port: a gateway moved to another went unhealthy."""
    options = ["-e", f"RERANKD_UPSTREAM=http://{server}:8000", "-e", "RERANKD_DATABASE_URL=sqlite:////tmp/ledger.db",
               *k8s_like("gateway")]
    if moved_by == "RERANKD_PORT":
        container = start(f"gw-env-{uuid.uuid4().hex[:4]}", network, *options, "-e", "RERANKD_PORT=9181",
                          image=IMAGES["gateway"])
    else:
        container = start(f"gw-flag-{uuid.uuid4().hex[:4]}", network, *options, image=IMAGES["gateway"],
                          command=("gateway", "--host", "0.0.0.0", "--port", "9182"))
    try:
        wait_healthy(container, timeout=180)
        last = inspect(container)["State"]["Health"]["Log"][-1]["Output"]
        assert ("127.0.0.1:9181/health: 200" if moved_by == "RERANKD_PORT" else "127.0.0.1:9182/health: 200") in last
    finally:
        remove(container)


# ---------------------------------------------------------------- UI


def test_ui_page_loads(ui: str) -> None:
    url = f"http://127.0.0.1:{host_port(ui, 7860)}/"
    wait_until(lambda: get_ok(url), 180, "the UI's page", lambda: logs(ui))
    page = httpx.get(url, timeout=30)
    assert page.status_code == 200 and "gradio" in page.text.lower()


def test_ui_ranks_through_the_gateway_as_the_api_does(ui: str, gateway: str, gateway_key: str) -> None:
    """A real request through the UI container (gradio_client, as a script would drive it): the gateway's order."""
    from gradio_client import Client

    url = f"http://127.0.0.1:{host_port(ui, 7860)}/"
    wait_until(lambda: get_ok(url), 180, "the UI's page", lambda: logs(ui))
    table, summary, _ = Client(url, verbose=False).predict(
        query="capital of France", instruction="", documents="\n".join(DOCUMENTS), documents_file=None, top_n=0,
        api_name="/rerank")
    direct = rerank(f"http://127.0.0.1:{host_port(gateway, 8080)}", gateway_key)
    assert [row[3] for row in table["data"]] == [r["index"] for r in direct["results"]], (table, direct)
    assert f"{len(DOCUMENTS)} of {len(DOCUMENTS)} documents" in summary


def test_ui_healthcheck_goes_healthy(ui: str) -> None:
    wait_healthy(ui)


def test_ui_is_non_root_on_a_read_only_root(ui: str) -> None:
    assert_non_root_on_a_read_only_root(ui, "ui")


# ---------------------------------------------------------------- stopping (last: each ends its container)


def test_ui_stops_on_sigterm_within_the_grace_period(ui: str) -> None:
    """The first build's UI ignored SIGTERM as PID 1: `docker stop` waited it out and killed it (137)."""
    wait_healthy(ui)
    assert_stops_cleanly(ui)


def test_gateway_stops_on_sigterm_within_the_grace_period(gateway: str, gateway_key: str) -> None:
    assert_stops_cleanly(gateway)


def test_server_stops_on_sigterm_within_the_grace_period(server: str, server_url: str) -> None:
    assert_stops_cleanly(server)
