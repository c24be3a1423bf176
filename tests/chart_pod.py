"""One rendered pod of the chart, run on this machine inside a network namespace of its own (as a pod has one), then
called as a client in the cluster would call it: by the Service's names. Started by tests/test_chart_pod.py as
`unshare --net --map-root-user python -m tests.chart_pod SPEC.json` (with --mount when the spec names `hosts`);
prints one JSON object with what it saw.

What stands in for what cannot exist here (the spec says which): the images are this checkout (scopegate) and the
demo ledger (the user's server); mounted ConfigMaps and Secrets are files in a temporary folder; cluster DNS and the
Service are a getaddrinfo that knows only the Service's names (-> 127.0.0.2, the ClusterIP) and a forwarder from
ClusterIP:port to the pod's targetPort (kube-proxy's part). Everything else,
the container's command, arguments, environment, listen addresses and probes, is taken from the rendered manifests
unchanged. Nothing here leaves the namespace's own loopback.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from proxy.demo.run import stop_process

SIOCSIFFLAGS = 0x8914
IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x1, 0x8, 0x40


def loopback_up() -> None:
    """A new network namespace's loopback is down: bring it up, as the pod's sandbox does."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING))


CLUSTER_IP = "127.0.0.2"  # the Service's address: another loopback address inside this namespace


def install_service_dns(names: list[str]) -> None:
    """Cluster DNS, for this process: the Service's names resolve to its ClusterIP. Any other name fails to resolve
    (nothing here may leave the namespace)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name in names:
            return real(CLUSTER_IP, *args, **kwargs)
        if name in ("127.0.0.1", "localhost", CLUSTER_IP):
            return real(host, *args, **kwargs)
        raise socket.gaierror(socket.EAI_NONAME, f"{name}: not a name in this test's cluster")

    socket.getaddrinfo = getaddrinfo


def start_service(port: int, target: int) -> None:
    """kube-proxy's part: ClusterIP:port forwards to the pod's targetPort, byte for byte, on a thread of its own."""
    import threading

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pod_reader, pod_writer = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(pipe(reader, pod_writer), pipe(pod_reader, writer))

    ready = threading.Event()

    def run() -> None:
        loop = asyncio.new_event_loop()
        server = loop.run_until_complete(asyncio.start_server(forward, CLUSTER_IP, port))
        ready.set()
        loop.run_until_complete(server.serve_forever())

    threading.Thread(target=run, daemon=True).start()
    if not ready.wait(10):
        raise RuntimeError("the Service's forwarder did not start")


def wait_http(url: str, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return answer.status
        except urllib.error.HTTPError as error:
            if time.monotonic() > deadline:
                return error.code
        except OSError:
            if time.monotonic() > deadline:
                return 0
        time.sleep(0.1)


async def mcp_session(url: str, token: str | None, tool: str) -> dict[str, Any]:
    """The official SDK's client, as a workload in the cluster would use it: initialize, list tools, call one."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    http = httpx2.AsyncClient(headers=headers, timeout=20)
    async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
        tools = await client.list_tools()
        result = await client.call_tool(tool, {})
        return {"tools": sorted(t.name for t in tools.tools), "is_error": result.is_error,
                "content": result.structured_content}


def leaves(exc: BaseException) -> list[str]:
    """What went wrong inside the SDK's task groups, in words."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [f"{type(exc).__name__}: {exc}"]


def raw_post(url: str, headers: dict[str, str]) -> int:
    body = b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25",' \
           b'"capabilities":{},"clientInfo":{"name":"chart-pod","version":"1"}}}'
    request = urllib.request.Request(url, data=body, headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status
    except urllib.error.HTTPError as error:
        return error.code


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    loopback_up()
    out: dict[str, Any] = {}
    processes: list[subprocess.Popen[bytes]] = []
    logs = Path(spec["folder"])
    try:
        if spec.get("hosts"):  # names the pod's own processes resolve (libc, uvloop too): cluster DNS, as /etc/hosts
            hosts = logs / "hosts"
            hosts.write_text("".join(f"{CLUSTER_IP} {name}\n" for name in spec["hosts"]))
            subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)  # this mount namespace only
        for other in spec.get("other_services", []):  # in the cluster before the pod
            start_service(other["port"], other["target"])
        for container in spec["containers"]:  # the sidecar first, then scopegate, as the kubelet starts them
            log = (logs / f"{container['name']}.log").open("wb")
            processes.append(subprocess.Popen(container["argv"], env=container["env"], stdout=log, stderr=log,
                                              cwd=spec["cwd"]))
        kubelet = spec["probes"]
        out["probes"] = {name: wait_http(f"http://127.0.0.1:{p['port']}{p['path']}", p["seconds"])
                         for name, p in kubelet.items()}
        out["exited"] = [p.poll() for p in processes]

        service = spec["service"]
        start_service(service["port"], service["target"])
        install_service_dns(service["names"])
        path, token = spec["mcp_path"], spec["token"]
        out["calls"] = {}
        for name in service["names"]:
            url = f"http://{name}:{service['port']}{path}" if service["port"] != 80 else f"http://{name}{path}"
            try:
                out["calls"][name] = asyncio.run(mcp_session(url, token, spec["tool"]))
            except Exception as exc:  # reported, and the test fails on it
                out["calls"][name] = {"error": leaves(exc)}
            out.setdefault("without_credential", {})[name] = raw_post(url, {})
        out["foreign_host"] = raw_post(f"http://{CLUSTER_IP}:{service['port']}{path}",
                                       {"Host": "evil.example", "Authorization": f"Bearer {token}"})

        hook = spec["helm_test"]  # the `helm test` pod's own command, with the same DNS
        done = subprocess.run(hook["argv"], env=hook["env"], capture_output=True, text=True, timeout=60)
        out["helm_test"] = {"exit": done.returncode, "output": done.stdout + done.stderr}
    finally:
        for process in reversed(processes):
            stop_process(process)
    out["logs"] = {p.stem: p.read_text(errors="replace")[-3000:] for p in logs.glob("*.log")}
    print(json.dumps(out))


def sitecustomize_source() -> str:
    """The text of a sitecustomize.py giving another Python process the same cluster DNS (names in $CHART_POD_DNS)."""
    return (
        "import json, os, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from tests.chart_pod import install_service_dns\n"
        "install_service_dns(json.loads(os.environ['CHART_POD_DNS']))\n"
    )


if __name__ == "__main__":
    main(sys.argv[1])
