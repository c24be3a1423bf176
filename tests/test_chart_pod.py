"""The README's Kubernetes example, as `helm template` renders it, answers a request made to the Service's name.

There is no cluster here, so this is the closest honest check: the rendered Deployment's pod is run on this machine
in a network namespace of its own (a pod's), with exactly the rendered command (the image's ENTRYPOINT, from the
Dockerfile), environment (the Dockerfile's ENV, then the container's env; secretKeyRef values from the Secrets the
README tells the operator to create) and listen addresses; then a client calls it by the Service's in-cluster names
(tests/chart_pod.py). Mapped, because it cannot exist here: the images (scopegate -> this checkout; the user's
server -> the demo ledger, which demands the app token), the mounted ConfigMap and Secrets (-> files with their
content), cluster DNS (-> a resolver knowing only the Service's names, which answers 127.0.0.2) and the Service itself
(-> a forwarder from 127.0.0.2:port to the pod's targetPort, as kube-proxy forwards).

What it does not prove: that a real kubelet, CNI, kube-proxy or NetworkPolicy controller behaves as assumed, that
the images build, or that Secrets mount as files with the modes asked.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from yarl import URL

from proxy.identity.pats import create_record, write_records
from tests.chart_pod import sitecustomize_source
from tests.test_packaging import ROOT, helm, kinds

POLICY = ROOT / "policies" / "app-token.yaml"  # the example's upstream takes an app token: this policy's case


def readme_example() -> tuple[dict[str, Any], str]:
    """The values block and the release name of the README's Kubernetes section, as printed there."""
    section = (ROOT / "README.md").read_text().split("## Kubernetes", 1)[1].split("\n## ", 1)[0]
    values = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    install = next(line for line in section.splitlines() if line.startswith("helm install "))
    return values, install.split()[2]


def image_entrypoint_and_env() -> tuple[list[str], dict[str, str]]:
    """ENTRYPOINT and ENV of the Dockerfile's final stage: what the container runs when the pod names no command."""
    final = (ROOT / "Dockerfile").read_text().rsplit("\nFROM ", 1)[1].replace("\\\n", " ")
    env: dict[str, str] = {}
    entrypoint: list[str] = []
    for line in final.splitlines():
        if line.startswith("ENV "):
            env.update(word.split("=", 1) for word in line[4:].split())
        elif line.startswith("ENTRYPOINT "):
            entrypoint = json.loads(line[len("ENTRYPOINT "):])
    return entrypoint, env


def mount(volumes: dict[str, dict[str, Any]], mounts: list[dict[str, Any]], objects: dict[tuple[str, str], dict],
          folder: Path) -> dict[str, str]:
    """Each volume mount -> a folder holding the ConfigMap's or Secret's keys as files; returns mountPath -> folder."""
    paths = {}
    for m in mounts:
        volume = volumes[m["name"]]
        if "configMap" in volume:
            data = objects[("ConfigMap", volume["configMap"]["name"])]
        elif "secret" in volume:
            data = objects[("Secret", volume["secret"]["secretName"])]
        else:  # an emptyDir or a claim: an empty folder of the pod's own (the credential state)
            data = {}
        where = folder / m["name"]
        where.mkdir()
        for key, text in data.items():
            (where / key).write_text(text)
        paths[m["mountPath"]] = str(where)
    return paths


def container_env(container: dict[str, Any], image_env: dict[str, str], objects: dict[tuple[str, str], dict],
                  paths: dict[str, str]) -> dict[str, str]:
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **image_env}
    for item in container.get("env", []):
        if "valueFrom" in item:
            ref = item["valueFrom"]["secretKeyRef"]
            value = objects[("Secret", ref["name"])][ref["key"]]
        else:
            value = item["value"]
        for mount_path, folder in paths.items():
            if value == mount_path or value.startswith(mount_path + "/"):
                value = folder + value[len(mount_path):]
        env[item["name"]] = value
    return env


def test_the_readme_example_answers_at_the_service_name(tmp_path: Path) -> None:
    unshare = shutil.which("unshare")
    assert unshare, "unshare (util-linux) is needed: the pod runs in a network namespace of its own"
    values, release = readme_example()
    namespace = "default"  # `helm install` without -n
    manifests = helm.Chart.load(ROOT / "helm" / "scopegate").render(values, name=release, namespace=namespace)
    docs = [d for path, text in manifests.items() if path.endswith(".yaml") for d in yaml.safe_load_all(text) if d]
    (deployment,) = kinds(docs, "Deployment")
    (service,) = [s for s in kinds(docs, "Service") if s["spec"]["ports"][0]["name"] == "mcp"]
    (hook,) = kinds(docs, "Pod")
    pod = deployment["spec"]["template"]["spec"]
    by_name = {c["name"]: c for c in pod["containers"]}
    gate, server = by_name["scopegate"], by_name["upstream"]

    # What the README tells the operator to create beforehand (kubectl create configmap / secret ...).
    record, token = create_record(kind="pat", label="chart pod", subject="ops", scopes=["store:read"],
                                  workspace="acme", workspaces=None, role=None, expires_in=600)
    write_records(tmp_path / "pats.yaml", [record])
    app_token = secrets.token_urlsafe(16)
    objects: dict[tuple[str, str], dict] = {
        ("ConfigMap", "scopegate-policy"): {"policy.yaml": POLICY.read_text()},
        ("Secret", "scopegate-pats"): {"pats.yaml": (tmp_path / "pats.yaml").read_text()},
        ("Secret", "ledger-app-token"): {"x-app-token": app_token},
    }
    for config_map in kinds(docs, "ConfigMap"):  # rendered ones (policy.inline) mount as rendered
        objects[("ConfigMap", config_map["metadata"]["name"])] = config_map["data"]

    volumes = {v["name"]: v for v in pod["volumes"]}
    folder = tmp_path / "volumes"
    folder.mkdir()
    paths = mount(volumes, gate["volumeMounts"], objects, folder)
    entrypoint, image_env = image_entrypoint_and_env()
    gate_env = container_env(gate, image_env, objects, paths)
    assert "command" not in gate and "args" not in gate  # so the image's ENTRYPOINT runs, as here
    upstream = URL(gate_env["SCOPEGATE_UPSTREAM"])
    server_env = {"PATH": gate_env["PATH"], **{e["name"]: e["value"] for e in server["env"]},
                  "LEDGER_APP_TOKEN": app_token}
    ports = {p["name"]: p["containerPort"] for p in gate["ports"]}
    probes = {name: {"port": ports[gate[name]["httpGet"]["port"]], "path": gate[name]["httpGet"]["path"],
                     "seconds": gate[name].get("periodSeconds", 10) * gate[name].get("failureThreshold", 3)}
              for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    full = service["metadata"]["name"]
    (service_port,) = service["spec"]["ports"]
    names = [f"{full}.{namespace}.svc.cluster.local", full]
    dns = [*names, f"{full}.{namespace}.svc", f"{full}.{namespace}"]
    shim = tmp_path / "site"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(sitecustomize_source())
    hook_argv = [sys.executable if word == "python" else word for word in hook["spec"]["containers"][0]["command"]]
    spec = {
        "folder": str(tmp_path), "cwd": str(tmp_path),
        "containers": [
            # The user's server image -> the demo ledger, on the host and port the rendered upstream URL names.
            {"name": "upstream", "env": server_env, "argv": [
                sys.executable, "-m", "proxy.demo.ledger", "--host", server_env["HOST"], "--port",
                str(upstream.port), "--app-token-env", "LEDGER_APP_TOKEN"]},
            {"name": "scopegate", "env": gate_env, "argv": entrypoint},
        ],
        "probes": probes,
        "service": {"names": names, "port": service_port["port"], "target": ports[service_port["targetPort"]]},
        "mcp_path": upstream.path, "token": token, "tool": "list_accounts",
        "helm_test": {"argv": hook_argv, "env": {"PATH": gate_env["PATH"], "PYTHONPATH": str(shim),
                                                  "CHART_POD_DNS": json.dumps(dns)}},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    done = subprocess.run([unshare, "--net", "--map-root-user", sys.executable, "-m", "tests.chart_pod",
                           str(tmp_path / "spec.json")], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    logs = seen["logs"]

    assert seen["probes"] == {"startupProbe": 200, "readinessProbe": 200, "livenessProbe": 200}, logs
    assert seen["exited"] == [None, None], logs
    for name in names:  # the long name and the short one a pod in the same namespace uses
        answer = seen["calls"][name]
        assert "error" not in answer, (name, answer, logs)
        assert "list_accounts" in answer["tools"] and "delete_journal_entry" not in answer["tools"]
        assert answer["is_error"] is False and answer["content"]["workspaceId"] == "acme", answer
        assert seen["without_credential"][name] == 401
    assert seen["foreign_host"] == 403  # the Host allow-list is on: the Service's names pass because they are on it
    assert seen["helm_test"]["exit"] == 0, seen["helm_test"]["output"]
    assert seen["helm_test"]["output"].count("scopegate answers") == 2
