"""The chart in front of what already runs (issue 29 item 3), without a cluster: `mode: attach` renders the Service,
policy, NetworkPolicy and policy check, and a strategic-merge patch that adds scopegate's container and volumes to a
Deployment the chart did not make; patched, that Deployment passes the chart's usual checks (strict lint, the values
schema, Kubernetes' schemas). Standalone mode's NetworkPolicy for the upstream's pods, the sidecar server's ports,
probes, envFrom and writable home, and the pre-install check that fails on an invalid inline policy with its errors
(the hook Job's command run against its ConfigMap, as the Job would run it)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.test_chart import containers, pod_of
from tests.test_packaging import BASE, CHART, ROOT, SIDECAR, STANDALONE, helm, kinds, render

VERSION = "1.30.0"
SELECTOR = {"app.kubernetes.io/name": "ledger-mcp", "app.kubernetes.io/instance": "ledger"}
ATTACH = {**BASE, "mode": "attach", "attach": {"name": "ledger-mcp", "selector": SELECTOR},
          "upstream": {"port": 3000, "path": "/mcp"}}
# A Deployment made elsewhere (another chart's, say): the server, its own volume and security context.
THEIRS = yaml.safe_load("""
apiVersion: apps/v1
kind: Deployment
metadata: {name: ledger-mcp, labels: {app.kubernetes.io/name: ledger-mcp}}
spec:
  replicas: 1
  selector: {matchLabels: {app.kubernetes.io/name: ledger-mcp, app.kubernetes.io/instance: ledger}}
  template:
    metadata: {labels: {app.kubernetes.io/name: ledger-mcp, app.kubernetes.io/instance: ledger}}
    spec:
      securityContext: {runAsNonRoot: true, runAsUser: 1000}
      containers:
        - name: server
          image: example/ledger-mcp:1.4
          args: [--host, 127.0.0.1, --port, "3000"]
          ports: [{name: http, containerPort: 3000}]
          volumeMounts: [{name: data, mountPath: /data}]
          readinessProbe: {tcpSocket: {port: 3000}}
      volumes:
        - {name: data, emptyDir: {}}
""")
_BY_NAME = {"containers", "initContainers", "volumes", "env", "volumeMounts"}  # SMP's patchMergeKey: name


def strategic_merge(base: Any, patch: Any, key: str = "") -> Any:
    """Kubernetes' strategic merge for what the patch touches: maps merged key by key, lists of named items
    (containers, volumes, env, mounts) merged by name, anything else replaced (as kustomize applies the patch)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for name, value in patch.items():
            merged[name] = strategic_merge(base[name], value, name) if name in base else value
        return merged
    if key in _BY_NAME and isinstance(base, list) and isinstance(patch, list):
        merged_list = [dict(item) for item in base]
        index = {item["name"]: i for i, item in enumerate(merged_list)}
        for item in patch:
            if item["name"] in index:
                merged_list[index[item["name"]]] = strategic_merge(merged_list[index[item["name"]]], item)
            else:
                merged_list.append(item)
        return merged_list
    return patch


def attach_patch(values: dict[str, Any]) -> dict[str, Any]:
    with_patch = {**values, "attach": {**values["attach"], "patch": True}}
    manifests = helm.Chart.load(CHART).render(with_patch, name="gate", namespace="mcp")
    (patch,) = [d for d in yaml.safe_load_all(manifests["scopegate/templates/attach-patch.yaml"]) if d]
    return patch


def test_attach_renders_no_workload_of_its_own_and_validates() -> None:
    report = helm.lint(CHART, ATTACH, strict=True)
    assert [m for m in report["messages"] if m["severity"] >= 2] + report["errors"] == []
    helm.Chart.load(CHART).validate_schema(ATTACH)
    docs = render(ATTACH)
    assert kinds(docs, "Deployment") == [] and kinds(docs, "HorizontalPodAutoscaler") == []
    for doc in docs:
        kubernetes_validate.validate(doc, VERSION, strict=True)
    (service,) = kinds(docs, "Service")
    assert service["spec"]["selector"] == SELECTOR
    assert service["spec"]["ports"] == [{"name": "mcp", "port": 80, "targetPort": "mcp", "protocol": "TCP"}]
    (policy,) = kinds(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == SELECTOR
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == [8000]  # not the server's
    rendered = helm.Chart.load(CHART).render(ATTACH, name="gate", namespace="mcp")
    assert not yaml.safe_load(rendered["scopegate/templates/attach-patch.yaml"] or "null")  # only when asked


def test_the_patch_adds_scopegate_to_a_deployment_the_chart_did_not_make() -> None:
    extras = {"extraVolumes": [{"name": "audit", "emptyDir": {}}],
              "extraVolumeMounts": [{"name": "audit", "mountPath": "/var/log/scopegate"}]}
    patch = attach_patch({**ATTACH, **extras})
    assert (patch["kind"], patch["metadata"]["name"]) == ("Deployment", "ledger-mcp")
    patched = strategic_merge(copy.deepcopy(THEIRS), patch)
    kubernetes_validate.validate(patched, VERSION, strict=True)
    pod = patched["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["server", "scopegate"]
    assert pod["containers"][0] == THEIRS["spec"]["template"]["spec"]["containers"][0]  # theirs untouched
    assert pod["securityContext"] == THEIRS["spec"]["template"]["spec"]["securityContext"]
    assert [v["name"] for v in pod["volumes"]] == ["data", "policy", "pats", "state", "audit"]
    gate = pod["containers"][1]
    env = {e["name"]: e.get("value") for e in gate["env"]}
    assert env["SCOPEGATE_UPSTREAM"] == "http://127.0.0.1:3000/mcp"  # the server, in the same pod
    assert "gate-scopegate.mcp.svc" in env["SCOPEGATE_ALLOWED_HOSTS"]  # the attach Service's names
    assert gate["securityContext"]["runAsUser"] == 10001 and gate["securityContext"]["readOnlyRootFilesystem"]
    assert {m["name"] for m in gate["volumeMounts"]} == {"policy", "pats", "state", "audit"}
    assert "checksum/policy" in patched["spec"]["template"]["metadata"]["annotations"]
    assert patched["spec"]["template"]["metadata"]["labels"] == THEIRS["spec"]["template"]["metadata"]["labels"]
    # The same container the chart's own Deployment runs.
    own = containers(render({**SIDECAR, **extras, "upstream": {**SIDECAR["upstream"], "port": 3000}}))["scopegate"]
    assert {k: v for k, v in own.items() if k != "env"} == {k: v for k, v in gate.items() if k != "env"}


def test_attach_needs_the_workload_named() -> None:
    for values, words in (({**ATTACH, "attach": {"name": "ledger-mcp"}}, "attach.selector"),
                          ({**ATTACH, "attach": {"selector": SELECTOR}}, "attach.name")):
        with pytest.raises(Exception, match=words):
            render(values)


def test_the_kustomize_example_names_the_patch_the_chart_writes() -> None:
    example = yaml.safe_load((CHART / "examples" / "attach" / "kustomization.yaml").read_text())
    assert example["patches"] == [{"path": "scopegate-patch.yaml"}]
    script = (CHART / "examples" / "attach" / "post-renderer.sh").read_text()
    assert "scopegate-patch.yaml" in script and "kubectl kustomize" in script
    assert subprocess.run(["sh", "-n", str(CHART / "examples" / "attach" / "post-renderer.sh")]).returncode == 0


def test_standalone_lets_only_scopegate_reach_the_upstreams_pods() -> None:
    upstream_pods = {"app": "ledger-mcp"}
    values = {**STANDALONE, "upstream": {**STANDALONE["upstream"], "podSelector": upstream_pods}}
    docs = render(values)
    for doc in docs:
        kubernetes_validate.validate(doc, VERSION, strict=True)
    policies = {p["metadata"]["name"]: p for p in kinds(docs, "NetworkPolicy")}
    upstream = policies["scopegate-upstream"]["spec"]
    assert upstream["podSelector"] == {"matchLabels": upstream_pods}
    assert upstream["ingress"] == [{"from": [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "scopegate", "app.kubernetes.io/instance": "scopegate"}}}]}]
    assert len(kinds(render(STANDALONE), "NetworkPolicy")) == 1  # without podSelector: scopegate's own only


def test_the_sidecar_server_gets_ports_probes_env_from_and_a_writable_home() -> None:
    upstream = {**SIDECAR["upstream"], "ports": [{"name": "http", "containerPort": 8080}],
                "envFrom": [{"secretRef": {"name": "ledger-env"}}], "home": "/home/mcp",
                "readinessProbe": {"tcpSocket": {"port": "http"}}, "startupProbe": {"tcpSocket": {"port": 8080}},
                "command": ["npx", "-y", "ledger-mcp"]}
    values = {**SIDECAR, "upstream": upstream}
    report = helm.lint(CHART, values, strict=True)
    assert [m for m in report["messages"] if m["severity"] >= 2] + report["errors"] == []
    docs = render(values)
    for doc in docs:
        kubernetes_validate.validate(doc, VERSION, strict=True)
    server = containers(docs)["upstream"]
    assert server["ports"] == [{"name": "http", "containerPort": 8080}]
    assert server["envFrom"] == [{"secretRef": {"name": "ledger-env"}}]
    assert server["readinessProbe"] == {"tcpSocket": {"port": "http"}} and "livenessProbe" not in server
    assert {"name": "HOME", "value": "/home/mcp"} in server["env"]
    assert {"name": "upstream-home", "mountPath": "/home/mcp"} in server["volumeMounts"]
    assert {"name": "upstream-home", "emptyDir": {"sizeLimit": "1Gi"}} in pod_of(docs)["volumes"]
    (service,) = kinds(docs, "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["mcp"]  # the server's port stays inside


def hook_check(policy: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run the pre-install hook Job as it would run: its command (the image's `scopegate` is this checkout) on its
    ConfigMap's policy, mounted where the Job mounts it."""
    docs = render({**SIDECAR, "policy": {"inline": policy}})
    (job,) = kinds(docs, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    (config,) = [c for c in kinds(docs, "ConfigMap") if "helm.sh/hook" in c["metadata"].get("annotations", {})]
    assert int(config["metadata"]["annotations"]["helm.sh/hook-weight"]) < \
        int(job["metadata"]["annotations"]["helm.sh/hook-weight"])  # the ConfigMap exists before the Job runs
    for doc in (job, config):
        kubernetes_validate.validate(doc, VERSION, strict=True)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    mount = container["volumeMounts"][0]["mountPath"]
    command = container["command"]
    assert command[:3] == ["scopegate", "policy", "check"] and command[3].startswith(mount + "/")
    folder = tmp_path / mount.strip("/")
    folder.mkdir(parents=True)
    for key, text in config["data"].items():
        (folder / key).write_text(text)
    local = [sys.executable, "-m", "proxy", *command[1:3], str(tmp_path / command[3].strip("/"))]
    return subprocess.run(local, capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_an_invalid_inline_policy_fails_the_install_with_its_errors(tmp_path: Path) -> None:
    bad = "version: 1\nscopes: [mcp:read]\ntools:\n  - {match: list_accounts, scopes: [mcp:raed]}\n"
    failed = hook_check(bad, tmp_path / "bad")
    assert failed.returncode == 2, failed  # a failing pre-install hook fails `helm install`
    assert "mcp:raed" in failed.stdout + failed.stderr
    assert hook_check(BASE["policy"]["inline"], tmp_path / "good").returncode == 0
    existing = render({**SIDECAR, "policy": {"existingConfigMap": "mine"}})
    assert kinds(existing, "Job") == []  # a ConfigMap the operator manages is theirs to check


def run_pod(tmp_path: Path, docs: list[dict[str, Any]], pod: dict[str, Any], pat: tuple[str, str],
            servers: list[dict[str, Any]], other_services: list[dict[str, Any]] = (),  # type: ignore[assignment]
            cluster_names: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """Run one rendered pod as tests/test_chart_pod.py does (in a network namespace of its own, scopegate's container
    with the image's entrypoint and the rendered env, volumes as folders, Secrets and ConfigMaps as files, the
    Service as a forwarder and its names as DNS), with `servers` started first (their argv and env as given), and
    `other_services` (port -> target) that scopegate reaches by `cluster_names`. Returns what the pod's client saw."""
    import json
    import os
    import shutil

    from yarl import URL as Url

    from tests.chart_pod import sitecustomize_source
    from tests.test_chart_pod import container_env, image_entrypoint_and_env, mount

    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed: the pod runs in a network namespace of its own"
    gate = next(c for c in pod["containers"] if c["name"] == "scopegate")
    (service,) = [s for s in kinds(docs, "Service") if s["spec"]["ports"][0]["name"] == "mcp"]
    (hook,) = kinds(docs, "Pod")
    registry, token = pat
    objects: dict[tuple[str, str], dict] = {("Secret", "scopegate-pats"): {"pats.yaml": registry}}
    for config_map in kinds(docs, "ConfigMap"):
        objects[("ConfigMap", config_map["metadata"]["name"])] = config_map["data"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    folder = tmp_path / "volumes"
    folder.mkdir()
    files = [m for m in gate["volumeMounts"] if "emptyDir" not in volumes[m["name"]]]
    paths = mount(volumes, files, objects, folder)
    for m in gate["volumeMounts"]:  # emptyDirs: a folder of their own
        if "emptyDir" in volumes[m["name"]]:
            (folder / m["name"]).mkdir()
            paths[m["mountPath"]] = str(folder / m["name"])
    entrypoint, image_env = image_entrypoint_and_env()
    gate_env = container_env(gate, image_env, objects, paths)
    assert "command" not in gate and "args" not in gate
    shim = tmp_path / "site"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(sitecustomize_source())
    ports = {p["name"]: p["containerPort"] for p in gate["ports"]}
    probes = {name: {"port": ports[gate[name]["httpGet"]["port"]], "path": gate[name]["httpGet"]["path"],
                     "seconds": gate[name].get("periodSeconds", 10) * gate[name].get("failureThreshold", 3)}
              for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    full = service["metadata"]["name"]
    (service_port,) = service["spec"]["ports"]
    names = [f"{full}.mcp.svc.cluster.local", full]
    spec = {
        "folder": str(tmp_path), "cwd": str(tmp_path),
        "containers": [*({**server, "env": {"PATH": gate_env["PATH"], **server.get("env", {})}} for server in servers),
                       {"name": "scopegate", "env": gate_env, "argv": entrypoint}],
        "other_services": list(other_services),
        "hosts": list(cluster_names),  # what scopegate itself resolves (the upstream Service's name)
        "probes": probes,
        "service": {"names": names, "port": service_port["port"], "target": ports[service_port["targetPort"]]},
        "mcp_path": Url(gate_env["SCOPEGATE_UPSTREAM"]).path, "token": token, "tool": "list_accounts",
        "helm_test": {"argv": [sys.executable if w == "python" else w
                               for w in hook["spec"]["containers"][0]["command"]],
                      "env": {"PATH": gate_env["PATH"], "PYTHONPATH": str(shim),
                              "CHART_POD_DNS": json.dumps([*names, f"{full}.mcp.svc", f"{full}.mcp"])}},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    namespaces = ["--net", "--map-root-user", *(["--mount"] if cluster_names else [])]
    done = subprocess.run([unshare, *namespaces, sys.executable, "-m", "tests.chart_pod",
                           str(tmp_path / "spec.json")], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    logs = seen["logs"]
    assert seen["probes"] == {"startupProbe": 200, "readinessProbe": 200, "livenessProbe": 200}, logs
    assert seen["exited"] == [None] * len(spec["containers"]), logs
    for name in names:
        answer = seen["calls"][name]
        assert "error" not in answer, (name, answer, logs)
        assert "list_accounts" in answer["tools"] and "create_journal_entry" not in answer["tools"]
        assert answer["is_error"] is False and answer["content"]["workspaceId"] == "acme", answer
        assert seen["without_credential"][name] == 401
    assert seen["foreign_host"] == 403
    assert seen["helm_test"]["exit"] == 0, seen["helm_test"]["output"]
    return seen


def pod_pat(tmp_path: Path) -> tuple[str, str]:
    """A read-only PAT bound to workspace acme: the registry the pod mounts (its text), and the token."""
    from proxy.identity.pats import create_record, write_records

    record, token = create_record(kind="pat", label="chart pod", subject="ops", scopes=["mcp:read"],
                                  workspace="acme", workspaces=None, role=None, expires_in=600)
    write_records(tmp_path / "pats.yaml", [record])
    return (tmp_path / "pats.yaml").read_text(), token


LEDGER_POLICY = (ROOT / "policies" / "pat-workspaces.yaml").read_text()


def test_the_attached_pod_answers_at_the_service_name(tmp_path: Path) -> None:
    """The pod test of tests/test_chart_pod.py for the attached form: the Deployment made elsewhere, patched with
    the chart's patch, run as one pod (their server container -> the demo ledger, with the args their Deployment
    gives it), called by the attach Service's names."""
    values = {**ATTACH, "policy": {"inline": LEDGER_POLICY}}
    manifests = helm.Chart.load(CHART).render(values, name="gate", namespace="mcp")
    docs = [d for path, text in manifests.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
    pod = strategic_merge(copy.deepcopy(THEIRS), attach_patch(values))["spec"]["template"]["spec"]
    server = next(c for c in pod["containers"] if c["name"] == "server")
    run_pod(tmp_path, docs, pod, pod_pat(tmp_path),
            [{"name": "server", "argv": [sys.executable, "-m", "proxy.demo.ledger", *server["args"]]}])


def test_the_standalone_pod_reaches_its_upstream_by_service_name(tmp_path: Path) -> None:
    """The standalone form: scopegate's pod alone, its upstream another workload behind a Service of its own
    (ledger.mcp.svc:8080 -> the demo ledger's pod), reached by that name from scopegate's container."""
    values = {**STANDALONE, "policy": {"inline": LEDGER_POLICY},
              "upstream": {"url": "http://ledger.mcp.svc:8080/mcp", "podSelector": {"app": "ledger"}}}
    docs = render(values)
    (deployment,) = kinds(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["scopegate"]
    ledger = [sys.executable, "-m", "proxy.demo.ledger", "--host", "0.0.0.0", "--port", "18080"]
    run_pod(tmp_path, docs, pod, pod_pat(tmp_path), [{"name": "ledger-pod", "argv": ledger}],
            other_services=[{"port": 8080, "target": 18080}], cluster_names=["ledger.mcp.svc"])


def test_attach_notes_say_the_patch_is_needed_and_name_the_workload() -> None:
    from tests.test_chart import notes

    text = notes(ATTACH)
    assert "joins Deployment ledger-mcp" in text and "--set attach.patch=true" in text
    assert "port-forward deployment/ledger-mcp 9464" in text
    assert "port-forward deployment/scopegate 9464" in notes(SIDECAR)  # the chart's own Deployment otherwise
