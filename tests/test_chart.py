"""The Helm chart as an operator meets it: values.schema.json refuses what is wrong with a message naming it, the
user's server container has its own security context, the metrics port is closed by default, NOTES.txt says how to
reach and use it, and the optional pieces (ServiceAccount, probes, spread, volumes, names, Ingress, HTTPRoute,
`helm test`) render into valid manifests. Rendering goes through Helm's own engine (helm-python-sdk), which also
applies values.schema.json exactly as `helm install` and `helm template` do; jsonschema checks the schema a second
way, with an independent implementation."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.test_packaging import CHART, FULL, SIDECAR, STANDALONE, helm, kinds, render

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
TLS = {**SIDECAR, "tls": {"existingSecret": "scopegate-tls"}, "port": 8443, "service": {"port": 443}}
HA = {**STANDALONE, "redis": {"existingSecret": "scopegate-redis"}, "replicaCount": 3, "auditSink": "redis",
      "podDisruptionBudget": {"enabled": True}, "resources": {"limits": {"cpu": 2, "memory": "512Mi"}},
      "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                     "whenUnsatisfiable": "ScheduleAnyway"}]}
OAUTH = {**SIDECAR, "oauth": {"existingSecret": "scopegate-oauth", "keys": ["new.pem", "old.pem"],
                              "oidcClientSecret": "oidc-secret"}, "publicUrl": "https://mcp.example.com/mcp"}
EVERYTHING = {
    **FULL,
    "nameOverride": "gate", "fullnameOverride": "ledger-gate",
    "serviceAccount": {"create": True, "name": "ledger-gate-sa", "annotations": {"team": "ledger"}},
    "upstream": {**SIDECAR["upstream"], "securityContext": {"runAsUser": 1000, "readOnlyRootFilesystem": False},
                 "volumeMounts": [{"name": "cache", "mountPath": "/var/cache/ledger"}]},
    "extraVolumes": [{"name": "cache", "emptyDir": {}}, {"name": "audit", "emptyDir": {}}],
    "extraVolumeMounts": [{"name": "audit", "mountPath": "/var/log/scopegate"}],
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                   "whenUnsatisfiable": "DoNotSchedule"}],
    "ingress": {"enabled": True, "className": "nginx", "annotations": {"a": "b"},
                "tls": [{"secretName": "mcp-example-com", "hosts": ["mcp.example.com"]}]},
    "httpRoute": {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gateways"}],
                  "hostnames": ["gate.example.org"]},
    "networkPolicy": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}]},
    "auditSigningKey": {"existingSecret": "scopegate-audit-key"},
    "grafanaDashboard": {"enabled": True}, "prometheusRule": {"enabled": True},
}
VALUE_SETS = {"sidecar": SIDECAR, "sidecar-full": FULL, "standalone": STANDALONE, "tls": TLS, "redis-ha": HA,
              "oauth": OAUTH, "everything": EVERYTHING}


def deployment_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = kinds(docs, "Deployment")
    return deployment


def pod_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return deployment_of(docs)["spec"]["template"]["spec"]


def containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod_of(docs)["containers"]}


def notes(values: dict[str, Any]) -> str:
    return helm.Chart.load(CHART).render(values, name="scopegate", namespace="mcp")["scopegate/templates/NOTES.txt"]


# --- the schema ---------------------------------------------------------------------------------------------------

def resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = SCHEMA["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_the_schema_is_valid_and_names_every_value_in_values_yaml() -> None:
    """Every key of values.yaml, at every depth, is a property of the schema (Kubernetes objects passed through,
    such as affinity, stop the walk), and every object the schema describes refuses keys it does not name."""
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    missing = []

    def walk(values: Any, node: dict[str, Any], path: str) -> None:
        node = resolve(node)
        if not isinstance(values, dict) or "properties" not in node:
            return
        for key, value in values.items():
            if key in node["properties"]:
                walk(value, node["properties"][key], f"{path}.{key}")
            elif node.get("additionalProperties") is False:
                missing.append(f"{path}.{key}")

    walk(DEFAULTS, SCHEMA, "")
    assert missing == [], f"values.yaml keys the schema does not name: {missing}"

    def strict_everywhere(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if "properties" in node:
                assert node.get("additionalProperties") is False, f"{path} accepts any key"
            for key, child in node.items():
                strict_everywhere(child, f"{path}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                strict_everywhere(child, f"{path}/{i}")

    strict_everywhere(SCHEMA, "#")


@pytest.mark.parametrize("values", [DEFAULTS, *VALUE_SETS.values()], ids=["values.yaml", *VALUE_SETS])
def test_the_schema_accepts_every_value_set_the_suite_renders(values: dict[str, Any]) -> None:
    helm.Chart.load(CHART).validate_schema(values)  # Helm's own validator, as `helm install` runs it
    merged = helm.Chart.load(CHART).merge_values(values)
    errors = [e.message for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(merged)]
    assert errors == []  # and an independent implementation agrees


@pytest.mark.parametrize(("values", "words"), [
    ({**SIDECAR, "mode": "sidcar"}, ["'/mode'", "'sidecar', 'standalone'"]),
    ({**SIDECAR, "port": "eighty"}, ["'/port'", "want integer"]),
    ({**SIDECAR, "metrics": {"port": 70000}}, ["'/metrics/port'", "65,535"]),
    ({**SIDECAR, "upstream": {**SIDECAR["upstream"], "port": "eighty"}}, ["'/upstream/port'", "want integer"]),
    ({**SIDECAR, "service": {"port": 0}}, ["'/service/port'", "minimum"]),
    ({**SIDECAR, "replicas": 3}, ["additional properties 'replicas' not allowed"]),
    ({**SIDECAR, "upstream": {**SIDECAR["upstream"], "imgae": {"repository": "x"}}},
     ["'/upstream'", "additional properties 'imgae' not allowed"]),
    ({**SIDECAR, "policy": {"inline": "x", "hotreload": True}}, ["'/policy'", "'hotreload' not allowed"]),
    ({**SIDECAR, "securityContext": {"readOnlyRootFileSystem": True}},
     ["'/securityContext'", "'readOnlyRootFileSystem' not allowed"]),
    ({**SIDECAR, "logLevel": "verbose"}, ["'/logLevel'", "'debug', 'info', 'warning', 'error'"]),
    ({**SIDECAR, "image": {"pullPolicy": "always"}}, ["'/image/pullPolicy'", "'IfNotPresent'"]),
    ({**SIDECAR, "publicUrl": "mcp.example.com"}, ["'/publicUrl'"]),
    ({**SIDECAR, "networkPolicy": {"metricsFrom": [{"podSelectr": {}}]}}, ["'/networkPolicy/metricsFrom/0'"]),
    ({**SIDECAR, "replicaCount": 3}, ["replicaCount 3 needs redis.existingSecret"]),
    ({**SIDECAR, "workers": 4}, ["workers above 1 need redis.existingSecret"]),
    ({**SIDECAR, "auditSink": "redis"}, ["auditSink redis needs redis.existingSecret"]),
    ({**SIDECAR, "upstream": {**SIDECAR["upstream"], "port": 8000}}, ["upstream.port 8000 is also scopegate's port"]),
    ({**SIDECAR, "metrics": {"port": 8000}}, ["port and metrics.port are both 8000"]),
    ({**SIDECAR, "ingress": {"enabled": True}}, ["ingress.enabled needs ingress.hosts or publicUrl"]),
    ({**SIDECAR, "httpRoute": {"enabled": True, "hostnames": ["a.example"]}},
     ["httpRoute.enabled needs httpRoute.parentRefs"]),
], ids=lambda v: v[0] if isinstance(v, list) else None)
def test_bad_values_are_refused_with_a_message_naming_the_problem(values: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(helm.HelmError) as refused:
        render(values)
    message = str(refused.value)
    for word in words:
        assert word in message, message
    assert len(message) < 400 and "goroutine" not in message  # one clear statement, not a dump


def test_replicas_with_redis_render() -> None:
    assert deployment_of(render(HA))["spec"]["replicas"] == 3


# --- containers and their security ------------------------------------------------------------------------------

def test_the_servers_container_has_its_own_security_context_and_a_writable_tmp() -> None:
    docs = render(SIDECAR)
    own = containers(docs)
    pod = pod_of(docs)
    assert "runAsUser" not in pod["securityContext"] and "runAsGroup" not in pod["securityContext"]
    gate, server = own["scopegate"]["securityContext"], own["upstream"]["securityContext"]
    assert gate["runAsUser"] == 10001 and gate["readOnlyRootFilesystem"] is True
    assert "runAsUser" not in server  # the image's own user
    assert server["readOnlyRootFilesystem"] is True and server["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "upstream-tmp", "mountPath": "/tmp"} in own["upstream"]["volumeMounts"]
    (tmp,) = [v for v in pod["volumes"] if v["name"] == "upstream-tmp"]
    assert "emptyDir" in tmp
    assert not [m for m in own["scopegate"]["volumeMounts"] if m["mountPath"] == "/tmp"]

    relaxed = render({**SIDECAR, "upstream": {**SIDECAR["upstream"], "securityContext": {
        "runAsUser": 0, "runAsNonRoot": False, "readOnlyRootFilesystem": False}}})
    own = containers(relaxed)
    assert own["upstream"]["securityContext"]["runAsUser"] == 0
    assert own["upstream"]["securityContext"]["runAsNonRoot"] is False
    assert "volumeMounts" not in own["upstream"]  # a writable root needs no /tmp volume
    assert own["scopegate"]["securityContext"] == gate  # scopegate's stays strict
    assert not [v for v in pod_of(relaxed)["volumes"] if v["name"] == "upstream-tmp"]
    assert "upstream.securityContext lets your MCP server run as root" in notes(
        {**SIDECAR, "upstream": {**SIDECAR["upstream"], "securityContext": {"runAsUser": 0}}})
    assert "upstream-tmp" not in json.dumps(render(STANDALONE))


def test_the_metrics_port_is_closed_unless_peers_are_named_and_probes_stay() -> None:
    (policy,) = kinds(render(SIDECAR), "NetworkPolicy")
    rules = policy["spec"]["ingress"]
    assert [[p["port"] for p in rule["ports"]] for rule in rules] == [[8000]]  # 9464: no rule, so no peer
    monitoring = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    (policy,) = kinds(render({**SIDECAR, "networkPolicy": {"metricsFrom": monitoring}}), "NetworkPolicy")
    metrics_rules = [r for r in policy["spec"]["ingress"] if r["ports"][0]["port"] == 9464]
    assert metrics_rules == [{"ports": [{"port": 9464, "protocol": "TCP"}], "from": monitoring}]
    gate = containers(render(SIDECAR))["scopegate"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert gate[probe]["httpGet"]["port"] == "metrics"  # the kubelet's, from the node: no policy applies
    assert gate["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert "Prometheus cannot scrape /metrics until networkPolicy.metricsFrom" in notes(SIDECAR)
    assert "Prometheus cannot scrape" not in notes({**SIDECAR, "networkPolicy": {"metricsFrom": monitoring}})


# --- NOTES.txt ----------------------------------------------------------------------------------------------------

def test_notes_say_how_to_reach_it_get_a_credential_and_watch_it() -> None:
    text = notes(SIDECAR)
    for wanted in ("http://scopegate.mcp.svc.cluster.local:80/mcp", "port-forward svc/scopegate 8000:80",
                   "helm test scopegate -n mcp", "scopegate pat create --file pats.yaml",
                   "create secret generic scopegate-pats", "/readyz", "/healthz", "/metrics",
                   "port-forward deployment/scopegate 9464", "No TLS", "audit trail is unsigned"):
        assert wanted in text, wanted
    full = notes({**FULL, "auditSigningKey": {"existingSecret": "k"}, "networkPolicy": {"metricsFrom": [
        {"podSelector": {}}]}, "ingress": {"enabled": True}})
    assert "https://scopegate.mcp.svc.cluster.local:443/mcp" in full and "https://mcp.example.com/mcp" in full
    assert "JWTs from https://auth.example.com" in full and "Ingress hosts:       mcp.example.com" in full
    assert "WARNINGS" not in full  # nothing risky left to warn about
    risky = notes({**SIDECAR, "networkPolicy": {"enabled": False}, "service": {"type": "LoadBalancer"},
                   "securityContext": {"readOnlyRootFilesystem": False}})
    for warning in ("networkPolicy.enabled is false", "service.type LoadBalancer without tls.existingSecret",
                    "securityContext is weakened"):
        assert warning in risky, warning


# --- the optional pieces ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tls", "redis-ha", "oauth", "everything"])
def test_more_value_sets_lint_strictly_and_validate(name: str) -> None:
    values = VALUE_SETS[name]
    report = helm.lint(CHART, values, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert problems == [], problems
    for doc in render(values):
        if doc["apiVersion"].startswith(("monitoring.coreos.com/", "gateway.networking.k8s.io/")):
            continue  # CRDs: no schema in Kubernetes' own set (the HTTPRoute's shape is checked below)
        kubernetes_validate.validate(doc, "1.30.0", strict=True)


def test_service_account_is_made_with_no_token_mounted() -> None:
    docs = render(SIDECAR)
    (account,) = kinds(docs, "ServiceAccount")
    assert account["automountServiceAccountToken"] is False
    pod = pod_of(docs)
    assert pod["serviceAccountName"] == account["metadata"]["name"] == "scopegate"
    assert pod["automountServiceAccountToken"] is False
    existing = render({**SIDECAR, "serviceAccount": {"create": False, "name": "shared"}})
    assert kinds(existing, "ServiceAccount") == [] and pod_of(existing)["serviceAccountName"] == "shared"
    assert pod_of(render({**SIDECAR, "serviceAccount": {"create": False}}))["serviceAccountName"] == "default"


def test_names_spread_and_volumes() -> None:
    docs = render(EVERYTHING)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "ledger-gate") in names and ("Service", "ledger-gate") in names
    assert ("ServiceAccount", "ledger-gate-sa") in names and ("Pod", "ledger-gate-test") in names
    deployment = deployment_of(docs)
    assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "gate"
    pod = pod_of(docs)
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["labelSelector"] == {"matchLabels": deployment["spec"]["selector"]["matchLabels"]}
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert {v["name"] for v in pod["volumes"]} >= {"cache", "audit"}
    own = containers(docs)
    assert {"name": "audit", "mountPath": "/var/log/scopegate"} in own["scopegate"]["volumeMounts"]
    assert {"name": "cache", "mountPath": "/var/cache/ledger"} in own["upstream"]["volumeMounts"]
    env = {e["name"]: e.get("value") for e in own["scopegate"]["env"]}
    hosts = env["SCOPEGATE_ALLOWED_HOSTS"].split(",")
    for host in ("ledger-gate", "ledger-gate.mcp.svc.cluster.local", "mcp.example.com", "gate.example.org"):
        assert host in hosts, host
    assert len(hosts) == len(set(hosts))
    short = render({**SIDECAR, "nameOverride": "ledger"})
    assert deployment_of(short)["metadata"]["name"] == "scopegate-ledger"


def test_ingress_and_httproute_are_off_by_default_and_route_to_the_service() -> None:
    assert not [d for d in render(SIDECAR) if d["kind"] in ("Ingress", "HTTPRoute")]
    docs = render(EVERYTHING)
    (ingress,) = kinds(docs, "Ingress")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "mcp.example.com" and ingress["spec"]["ingressClassName"] == "nginx"
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {"name": "ledger-gate", "port": {"name": "mcp"}}
    (route,) = kinds(docs, "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateways"}]
    assert route["spec"]["hostnames"] == ["gate.example.org"]
    (route_rule,) = route["spec"]["rules"]
    assert route_rule["backendRefs"] == [{"name": "ledger-gate", "port": 443}]
    assert route_rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    defaulted = render({**OAUTH, "httpRoute": {"enabled": True, "parentRefs": [{"name": "gw"}]}})
    assert kinds(defaulted, "HTTPRoute")[0]["spec"]["hostnames"] == ["mcp.example.com"]


def test_helm_test_pod_calls_the_service_by_name_and_is_no_endpoint_of_it() -> None:
    docs = render(TLS)
    (test_pod,) = kinds(docs, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (service,) = kinds(docs, "Service")
    selector = service["spec"]["selector"]
    labels = test_pod["metadata"]["labels"]
    assert not all(labels.get(k) == v for k, v in selector.items())  # the Service never routes to it
    spec = test_pod["spec"]
    assert spec["automountServiceAccountToken"] is False and spec["restartPolicy"] == "Never"
    (check,) = spec["containers"]
    assert check["securityContext"]["readOnlyRootFilesystem"] is True
    assert check["command"][-2:] == ["https://scopegate:443", "https://scopegate.mcp.svc:443"]
    assert check["command"][-3] == "/mcp" and check["command"][-4] == "plain"
    kubernetes_validate.validate(test_pod, "1.30.0", strict=True)
    (mtls,) = kinds(render({**TLS, "tls": {"existingSecret": "t", "clientCA": True}}), "Pod")
    assert mtls["spec"]["containers"][0]["command"][-4] == "mtls"
    assert kinds(render(STANDALONE), "Pod")[0]["spec"]["containers"][0]["command"][-3] == "/mcp"



def test_every_value_is_documented_in_the_charts_readme() -> None:
    """Each value of values.yaml, nested ones too (down to Kubernetes objects passed through), has a row in the
    chart's README table: `a.b.c` itself, or `.c` in a row that names `a.b.` (the table's shorthand)."""
    rows = [line for line in (CHART / "README.md").read_text().splitlines() if line.startswith("| `")]
    missing = []

    def walk(values: Any, node: dict[str, Any], path: list[str]) -> None:
        node = resolve(node)
        if not isinstance(values, dict) or "properties" not in node:
            return
        for key, value in values.items():
            full = [*path, key]
            dotted = ".".join(full)
            parent = ".".join(path) + "."
            if not any(f"`{dotted}`" in row or f"`{dotted}." in row
                       or (path and f"`.{key}`" in row and f"`{parent}" in row) for row in rows):
                missing.append(dotted)
            if key not in ("securityContext", "podSecurityContext", "resources"):  # Kubernetes' own fields
                walk(value, node["properties"][key], full)

    walk(DEFAULTS, SCHEMA, [])
    assert missing == [], f"not in helm/scopegate/README.md: {missing}"
