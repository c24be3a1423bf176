"""`make bench`: scopegate's overhead against direct access and against a minimal Python pass-through proxy.

One run starts a fixed-answer MCP upstream (bench/upstream.py), the floor proxy (bench/floor.py) and scopegate, then
measures each target in turn, in the same run, on the same machine:

- small `tools/call` POSTs: requests/s at a fixed concurrency, and p50/p99 latency one request at a time;
- a 1,000-tool `tools/list` (about 500 KB): the same;
- SSE: how long after the upstream sent an event the client has it (the upstream stamps each event), and the time
  to the first event of a stream.

Ratios are printed against direct access and against the floor. Timings are never asserted anywhere: machines differ;
what matters is the ratio in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from proxy.demo.run import free_port, stop_process, wait_for_port
from proxy.identity.pats import create_record, write_records

ROOT = Path(__file__).resolve().parent.parent
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


BENCH_FOLDER = Path(tempfile.mkdtemp(prefix="scopegate-bench-"))
# A read-only caller: the policy lets it see half of the 1,000 tools, so list filtering really works.
_RECORD, TOKEN = create_record(kind="pat", label="bench", subject="bench", scopes=["mcp:read"],
                               workspace=None, workspaces=None, role=None, expires_in=3600)
write_records(BENCH_FOLDER / "pats.yaml", [_RECORD])
BENCH_POLICY = BENCH_FOLDER / "policy.yaml"
BENCH_POLICY.write_text(
    """version: 1
scopes: [mcp:read, mcp:write]
tools:  # workspace: said for every rule, as in the shipped policies (else the upstream's schema would decide)
  - {match: get_period_status, scopes: [mcp:read], workspace: none}
  - {match: tick, scopes: [mcp:read], workspace: none}
  - {match: "module0*", scopes: [mcp:read], workspace: none}
  - {match: "module1*", scopes: [mcp:write], effect: write, workspace: none}
  - {match: create_thing, scopes: [mcp:read], effect: write, workspace: none}
"""
)


def identity_args(port: int, reuse: int) -> list[str]:
    """`scopegate serve` flags for the bench policy with `upstream_identity:` (an ES256 key made for this run; the
    public URL is the assertions' iss): what `--identity` compares against the same policy without it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = BENCH_FOLDER / "identity-key.pem"
    if not key.exists():
        key.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    policy = BENCH_FOLDER / f"policy-identity-{reuse}.yaml"
    policy.write_text(BENCH_POLICY.read_text() + f"upstream_identity: {{reuse_seconds: {reuse}}}\n")
    return ["--policy", str(policy), "--upstream-identity-keys", str(key), "--public-url",
            f"http://127.0.0.1:{port}/mcp"]


# Five conditions on the called tool, each false for the bench's call (so it is forwarded, as without them), reading
# its arguments, the principal and the time: what `--policy-features` compares against the same policy without.
FIVE_CONDITIONS = """      - {when: 'has(args.amount) && args.amount > 1000', then: human, reason: big}
      - {when: 'args.period < "2020-01"', then: deny, reason: closed}
      - {when: 'args.workspaceId == "frozen"', then: deny, reason: frozen}
      - {when: 'principal.kind == "oauth" && principal.client == "unknown"', then: deny, reason: client}
      - {when: 'now < timestamp("2020-01-01T00:00:00Z")', then: deny, reason: past}
"""


def feature_args(feature: str, redis_url: str | None = None) -> list[str]:
    """`scopegate serve` flags for the bench policy with five conditions on the called tool (`cond`), or a rate limit
    on it that the bench never reaches (`limit`: in memory, or in Redis with `redis_url`)."""
    text = BENCH_POLICY.read_text()
    if feature == "cond":
        rule = "  - {match: get_period_status, scopes: [mcp:read], workspace: none}\n"
        text = text.replace(rule, "  - match: get_period_status\n    scopes: [mcp:read]\n    workspace: none\n"
                            "    conditions:\n" + FIVE_CONDITIONS)
    else:
        text += ("limits:\n  - {name: bench, match: get_period_status, per: [credential, tool, workspace], "
                 "rate: 1000000, period_seconds: 1}\n")
    policy = BENCH_FOLDER / f"policy-{feature}.yaml"
    policy.write_text(text)
    return ["--policy", str(policy), *(["--redis-url", redis_url] if redis_url else [])]


def headers(method: str, name: str | None = None) -> dict[str, str]:
    # Every target gets the same token; only scopegate checks it (a PAT: hash, registry, revocation lookup).
    out = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
           "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": method, "Authorization": f"Bearer {TOKEN}"}
    if name:
        out["Mcp-Name"] = name
    return out


CALL = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
    "name": "get_period_status", "arguments": {"workspaceId": "acme", "period": "2026-10"}, "_meta": META}})
LIST = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}})


def tick(count: int, gap: float) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "tick", "arguments": {"count": count, "gap": gap}, "_meta": META}})


@dataclass
class Load:
    rps: float
    cpu_us: float  # CPU time the serving process spent per request (0 where not measured)
    p50_ms: float
    p99_ms: float


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a process and its children alive now (a supervisor's workers), from /proc (Linux);
    0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (OSError, IndexError):
        return 0.0
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(int(child)) for child in children)


async def throughput(http: aiohttp.ClientSession, url: str, body: bytes, hdrs: dict, concurrency: int,
                     seconds: float) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            async with http.post(url, data=body, headers=hdrs) as resp:
                await resp.read()
                if resp.status != 200:
                    raise SystemExit(f"bench: {url} answered {resp.status}")
                if b'"isError":true' in await resp.read():  # a refusal is cheap: it must not pass for a call
                    raise SystemExit(f"bench: {url} refused the call")
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def latencies(targets: dict[str, str], body: bytes, hdrs: dict, count: int) -> dict[str, tuple[float, float]]:
    """p50 and p99 of one request at a time, taking the targets in turn request by request, so that whatever else
    the machine does at that moment falls on all of them alike."""
    samples: dict[str, list[float]] = {name: [] for name in targets}
    async with aiohttp.ClientSession() as http:
        for i in range(count + 20):
            for name, url in targets.items():
                started = time.perf_counter()
                async with http.post(url, data=body, headers=hdrs) as resp:
                    await resp.read()
                if i >= 20:  # the first ones warm connections and caches
                    samples[name].append((time.perf_counter() - started) * 1000)
    out = {}
    for name, values in samples.items():
        values.sort()
        out[name] = (statistics.median(values), values[int(len(values) * 0.99) - 1])
    return out


async def interleaved(targets: dict[str, tuple[str, int | None]], rounds: int, body: bytes, hdrs: dict,
                      concurrency: int, seconds: float, count: int) -> dict[str, Load]:
    """Throughput and CPU per request: each target `rounds` times, in turn, median. Latency: request by request."""
    rps: dict[str, list[float]] = {name: [] for name in targets}
    cpu: dict[str, list[float]] = {name: [] for name in targets}
    for _ in range(rounds):
        for name, (url, pid) in targets.items():
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as http:
                await throughput(http, url, body, hdrs, concurrency, 0.3)  # warm the pools
                before = cpu_seconds(pid)
                rate = await throughput(http, url, body, hdrs, concurrency, seconds)
                rps[name].append(rate)
                cpu[name].append((cpu_seconds(pid) - before) / (rate * seconds) * 1e6 if pid else 0.0)
    lat = await latencies({name: url for name, (url, _) in targets.items()}, body, hdrs, count)
    return {name: Load(statistics.median(rps[name]), statistics.median(cpu[name]), *lat[name]) for name in targets}


async def sse_delays(url: str, streams: int, events: int) -> tuple[float, float, float]:
    """Per-event delay between the upstream's send and the client's receipt (p50, p99, ms) and first-event time."""
    delays: list[float] = []
    firsts: list[float] = []
    async with aiohttp.ClientSession() as http:
        for _ in range(streams):
            started = time.perf_counter()
            async with http.post(url, data=tick(events, 0.005), headers=headers("tools/call", "tick")) as resp:
                first = True
                async for line in resp.content:
                    if line.startswith(b"data: ") and b"notifications/progress" in line:
                        now = time.time_ns()
                        if first:
                            firsts.append((time.perf_counter() - started) * 1000)
                            first = False
                        sent = int(orjson.loads(line[6:])["params"]["message"])
                        delays.append((now - sent) / 1e6)
    delays.sort()
    return statistics.median(delays), delays[int(len(delays) * 0.99) - 1], statistics.median(firsts)


async def confirmation_cost(url: str, count: int = 300) -> dict[str, tuple[float, float]]:
    """p50/p99 ms, one at a time: a plain read call, a write's preview, and its confirmation (forwarded)."""
    read = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
        "name": "get_period_status", "arguments": {}, "_meta": META}})
    samples: dict[str, list[float]] = {"read call": [], "write: preview": [], "write: confirm": []}

    def body(arguments: dict) -> bytes:
        return orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                             "params": {"name": "create_thing", "arguments": arguments, "_meta": META}})

    async with aiohttp.ClientSession() as http:
        for i in range(count + 10):
            timings = []
            started = time.perf_counter()
            async with http.post(url, data=read, headers=headers("tools/call", "get_period_status")) as resp:
                await resp.read()
            timings.append(time.perf_counter() - started)
            started = time.perf_counter()
            async with http.post(url, data=body({"n": i}), headers=headers("tools/call", "create_thing")) as resp:
                token = orjson.loads(await resp.read())["result"]["structuredContent"]["confirmationToken"]
            timings.append(time.perf_counter() - started)
            started = time.perf_counter()
            async with http.post(url, data=body({"n": i, "confirmationToken": token}),
                                 headers=headers("tools/call", "create_thing")) as resp:
                answer = orjson.loads(await resp.read())["result"]
                if answer.get("structuredContent") != {"status": "open"}:
                    raise SystemExit(f"bench: the confirmation did not go through: {answer}")
            timings.append(time.perf_counter() - started)
            if i >= 10:
                for name, took in zip(samples, timings, strict=True):
                    samples[name].append(took * 1000)
    out = {}
    for name, values in samples.items():
        values.sort()
        out[name] = (statistics.median(values), values[int(len(values) * 0.99) - 1])
    return out


def start_redis() -> subprocess.Popen[bytes] | None:
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        return None
    sock = BENCH_FOLDER / "redis.sock"
    process = subprocess.Popen([binary, "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no",
                                "--dir", str(BENCH_FOLDER)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return process


def filter_cost(rounds: int = 50) -> tuple[float, float, float, int]:
    """In-process: ms to parse the 1,000-tool list once, ms to filter it for the bench caller, ms to find it filtered
    in the cache (recognise, digest, look up, splice), tools kept."""
    from multidict import CIMultiDict
    from upstream import TOOLS  # bench/ is on sys.path: this file runs as a script

    from proxy.exchange import Exchange
    from proxy.guards.list_filter import ListFilter
    from proxy.identity.pats import Registry
    from proxy.jsonrpc import recognise_response, splice_response
    from proxy.policy.decide import Rules
    from proxy.policy.model import load_policy
    from proxy.policy.reload import LivePolicy

    policy = load_policy(BENCH_POLICY)
    principal, _ = Registry(BENCH_FOLDER / "pats.yaml", policy).lookup(TOKEN)
    exchange = Exchange("bench", None, "2026-07-28", CIMultiDict(), principal=principal)
    listing = ListFilter(LivePolicy(policy, Rules(policy)))
    body = orjson.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": TOOLS}})
    parse = filt = 0.0
    kept = 0
    for _ in range(rounds):
        started = time.perf_counter()
        message = orjson.loads(body)
        parsed = time.perf_counter()
        kept = len(listing(exchange, message, "tools/list")["result"]["tools"])
        parse += parsed - started
        filt += time.perf_counter() - parsed
    cached = 0.0
    for _ in range(rounds):
        started = time.perf_counter()
        found = recognise_response(body)
        assert found is not None
        splice_response(found.msg_id, listing.raw(exchange, found, "tools/list"))
        cached += time.perf_counter() - started
    return parse / rounds * 1000, filt / rounds * 1000, cached / rounds * 1000, kept


Row = tuple[str, Callable[[float, float], str]]


def ratio(value: float, base: float) -> str:
    return f"{value / base:5.2f}x" if base else "  -  "


async def run(seconds: float, concurrency: int, rounds: int, extra_env: list[str], identity: bool = False,
              features: bool = False, redis_url: str | None = None) -> None:
    """`identity`: two more scopegate targets with the policy's `upstream_identity:` on, a read's assertion reused
    (the default) and signed for every request (`reuse_seconds: 0`), measured in the same rounds as the one off.
    `features`: targets with five conditions on the called tool, and with a rate limit on it (in memory; and in
    Redis at `redis_url`, given one)."""
    py = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")}
    env.update(item.split("=", 1) for item in extra_env)  # e.g. the audit signing key, OTEL_* for tracing
    up_port, floor_port, gate_port = free_port(), free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/mcp"
    processes = [
        subprocess.Popen([py, str(ROOT / "bench" / "upstream.py"), "--port", str(up_port)], env=env),
        subprocess.Popen([py, str(ROOT / "bench" / "floor.py"), "--port", str(floor_port), "--upstream",
                          upstream_url], env=env),
        subprocess.Popen([py, "-m", "proxy", "serve", "--upstream", upstream_url, "--listen",
                          f"127.0.0.1:{gate_port}", "--log-level", "warning", "--pat-file",
                          str(BENCH_FOLDER / "pats.yaml"), "--policy", str(BENCH_POLICY), "--metrics-listen",
                          "127.0.0.1:0"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL),  # audit records
    ]
    ports = [up_port, floor_port, gate_port]
    assertions = {"sg+id": 30, "sg+id/call": 0} if identity else {}
    variants: dict[str, Callable[[int], list[str]]] = {
        name: (lambda port, reuse=reuse: identity_args(port, reuse)) for name, reuse in assertions.items()}
    if features:
        variants["sg+5cond"] = lambda port: feature_args("cond")
        variants["sg+limit"] = lambda port: feature_args("limit")
        if redis_url:
            variants["sg+limit/r"] = lambda port: feature_args("limit", redis_url)
    for make_args in variants.values():
        ports.append(free_port())
        processes.append(subprocess.Popen(
            [py, "-m", "proxy", "serve", "--upstream", upstream_url, "--listen", f"127.0.0.1:{ports[-1]}",
             "--log-level", "warning", "--pat-file", str(BENCH_FOLDER / "pats.yaml"), "--metrics-listen",
             "127.0.0.1:0", *make_args(ports[-1])], env=env, cwd=ROOT, stdout=subprocess.DEVNULL))
    try:
        for port, process in zip(ports, processes, strict=True):
            wait_for_port(port, process, f"bench: {' '.join(map(str, process.args))}")
        # CPU is counted for the proxy processes only: "direct" has no proxy.
        targets: dict[str, tuple[str, int | None]] = {
            "direct": (upstream_url, None),
            "floor": (f"http://127.0.0.1:{floor_port}/mcp", processes[1].pid),
            "scopegate": (f"http://127.0.0.1:{gate_port}/mcp", processes[2].pid),
        }
        for name, port, process in zip(variants, ports[3:], processes[3:], strict=True):
            targets[name] = (f"http://127.0.0.1:{port}/mcp", process.pid)
        print(f"bench: {os.cpu_count()} cores; throughput: per target {rounds} interleaved rounds of {seconds:g} s "
              f"at concurrency {concurrency} (median);")
        print("       latency: 1,000 (list: 200) requests one at a time, targets taken in turn\n")
        header = f"{'scenario':<26}{'target':<11}{'req/s':>9}{'cpu us/req':>11}{'p50 ms':>9}{'p99 ms':>9}"
        header += f"{'rps/direct':>11}{'rps/floor':>10}{'cpu/floor':>10}{'+p50/floor':>11}"
        print(header)
        print("-" * len(header))
        scenarios = [
            ("tools/call (small)", CALL, headers("tools/call", "get_period_status"), concurrency, 1000),
            ("tools/list (1,000 tools)", LIST, headers("tools/list"), max(2, concurrency // 4), 200),
        ]
        for title, body, hdrs, conc, count in scenarios:
            results = await interleaved(targets, rounds, body, hdrs, conc, seconds, count)
            direct, floor = results["direct"], results["floor"]
            for name, r in results.items():
                added = r.p50_ms - direct.p50_ms
                floor_added = floor.p50_ms - direct.p50_ms
                cpu = f"{r.cpu_us:11.0f}" if r.cpu_us else f"{'-':>11}"
                line = f"{title:<26}{name:<11}{r.rps:9.0f}{cpu}{r.p50_ms:9.2f}{r.p99_ms:9.2f}"
                line += f"{ratio(r.rps, direct.rps):>11}{ratio(r.rps, floor.rps):>10}"
                line += f"{ratio(r.cpu_us, floor.cpu_us) if r.cpu_us else '':>10}"
                line += f"{ratio(added, floor_added) if name == 'scopegate' and floor_added > 0 else '':>11}"
                print(line)
            if assertions:
                off = results["scopegate"]
                print(f"{'':<26}identity on / off: CPU {ratio(results['sg+id'].cpu_us, off.cpu_us)} (a read's "
                      f"assertion reused), {ratio(results['sg+id/call'].cpu_us, off.cpu_us)} (signed per request); "
                      f"req/s {ratio(results['sg+id'].rps, off.rps)}, {ratio(results['sg+id/call'].rps, off.rps)}")
            if features and title.startswith("tools/call"):
                off = results["scopegate"]
                for name, what in (("sg+5cond", "five conditions"), ("sg+limit", "a limit (memory)"),
                                   ("sg+limit/r", "a limit (Redis)")):
                    if name in results:
                        print(f"{'':<26}{what} / none: CPU {ratio(results[name].cpu_us, off.cpu_us)}, "
                              f"req/s {ratio(results[name].rps, off.rps)}, "
                              f"+p50 {results[name].p50_ms - off.p50_ms:+.3f} ms")
            print()
        print(f"{'SSE event delay':<26}{'target':<11}{'p50 ms':>9}{'p99 ms':>9}{'first ev ms':>13}"
              f"{'+p50 vs direct':>16}")
        base = None
        for name, (url, _) in targets.items():
            if name in variants:
                continue
            p50, p99, first = await sse_delays(url, streams=10, events=40)
            base = p50 if base is None else base
            print(f"{'(40 events, 5 ms apart)':<26}{name:<11}{p50:9.3f}{p99:9.3f}{first:13.2f}{p50 - base:16.3f}")
        redis = start_redis()
        if redis is None:
            print("\npreview + confirm: skipped (no redis-server; apt-get install redis-server)")
        else:
            processes.append(redis)
            confirm_port = free_port()
            confirm_gate = subprocess.Popen(
                [py, "-m", "proxy", "serve", "--upstream", upstream_url, "--listen", f"127.0.0.1:{confirm_port}",
                 "--log-level", "warning", "--pat-file", str(BENCH_FOLDER / "pats.yaml"), "--policy",
                 str(BENCH_POLICY), "--redis-url", f"unix://{BENCH_FOLDER / 'redis.sock'}", "--metrics-listen",
                 "127.0.0.1:0"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
            processes.append(confirm_gate)
            wait_for_port(confirm_port, confirm_gate, "bench: scopegate with Redis")
            costs = await confirmation_cost(f"http://127.0.0.1:{confirm_port}/mcp")
            base = costs["read call"][0]
            print(f"\n{'scopegate with Redis':<26}{'call':<17}{'p50 ms':>9}{'p99 ms':>9}{'p50 / read':>12}")
            for name, (p50, p99) in costs.items():
                print(f"{'(one at a time, 300 each)':<26}{name:<17}{p50:9.2f}{p99:9.2f}{p50 / base:11.2f}x")
        parse_ms, filter_ms, cached_ms, kept = filter_cost()
        print(f"\nlist filtering, in process: parsing the 1,000-tool list takes {parse_ms:.2f} ms, filtering it "
              f"{filter_ms:.2f} ms ({filter_ms / parse_ms:.2f}x parsing; {kept} tools kept); seen before, finding "
              f"it filtered in the cache {cached_ms:.2f} ms")
    finally:
        stop(processes)



def stop(processes: list[subprocess.Popen[bytes]], seconds: float = 15) -> None:
    """Terminate every process this run started, then wait for each (killed if it will not go)."""
    for process in processes:
        process.terminate()  # all at once, then each waited for
    for process in processes:
        stop_process(process, seconds)


async def workers_run(workers: int, seconds: float, concurrency: int, rounds: int) -> None:
    """scopegate with 1 and with `workers` workers (both with Redis, which several workers need): throughput and
    CPU per request (the supervisor and its workers together)."""
    py = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")}
    up_port = free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/mcp"
    processes: list[subprocess.Popen[bytes]] = [
        subprocess.Popen([py, str(ROOT / "bench" / "upstream.py"), "--port", str(up_port)], env=env)]
    try:
        wait_for_port(up_port, processes[0], "bench: upstream")
        redis = start_redis()
        if redis is None:
            raise SystemExit("bench --workers: needs redis-server (apt-get install redis-server)")
        processes.append(redis)
        targets: dict[str, tuple[str, int | None]] = {}
        for count in (1, workers):
            port = free_port()
            gate = subprocess.Popen(
                [py, "-m", "proxy", "serve", "--upstream", upstream_url, "--listen", f"127.0.0.1:{port}",
                 "--log-level", "warning", "--pat-file", str(BENCH_FOLDER / "pats.yaml"), "--policy",
                 str(BENCH_POLICY), "--redis-url", f"unix://{BENCH_FOLDER / 'redis.sock'}", "--metrics-listen",
                 "127.0.0.1:0"], env={**env, "SCOPEGATE_WORKERS": str(count)}, cwd=ROOT, stdout=subprocess.DEVNULL)
            processes.append(gate)
            wait_for_port(port, gate, f"bench: scopegate, {count} workers")
            await asyncio.sleep(2)  # every worker listening, not only the first
            targets[f"{count} worker{'s' if count > 1 else ''}"] = (f"http://127.0.0.1:{port}/mcp", gate.pid)
        print(f"bench --workers {workers}: {os.cpu_count()} cores, shared with this load generator (one Python "
              f"process, itself bound to one core), so more workers than free cores cannot scale; {rounds} "
              f"interleaved rounds of {seconds:g} s at concurrency {concurrency} (median)\n")
        header = f"{'scenario':<26}{'target':<12}{'req/s':>9}{'cpu us/req':>11}{'rps/1':>8}{'cpu/1':>8}"
        print(header)
        print("-" * len(header))
        for title, body, hdrs in (("tools/call (small)", CALL, headers("tools/call", "get_period_status")),
                                  ("tools/list (1,000 tools)", LIST, headers("tools/list"))):
            results = await interleaved(targets, rounds, body, hdrs, concurrency, seconds, 50)
            one = results["1 worker"]
            for name, r in results.items():
                print(f"{title:<26}{name:<12}{r.rps:9.0f}{r.cpu_us:11.0f}{ratio(r.rps, one.rps):>8}"
                      f"{ratio(r.cpu_us, one.cpu_us):>8}")
            print()
    finally:
        stop(processes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each throughput run")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for the scopegate processes (repeatable), e.g. OTEL_EXPORTER_OTLP_ENDPOINT=...")
    parser.add_argument("--identity", action="store_true",
                        help="also: scopegate with the policy's upstream_identity on (a read's assertion reused, and "
                             "signed per request), in the same rounds")
    parser.add_argument("--policy-features", action="store_true",
                        help="also: scopegate with five conditions on the called tool, and with a rate limit on it "
                             "(in memory; in Redis too with --redis-url), in the same rounds")
    parser.add_argument("--redis-url", help="with --policy-features: a Redis for the limit's Redis target "
                        "(e.g. unix:///tmp/redis.sock, a Redis of your own that may be written to)")
    parser.add_argument("--workers", type=int, default=0,
                        help="instead: compare scopegate with 1 and with this many workers (SCOPEGATE_WORKERS)")
    args = parser.parse_args()
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    if args.workers > 1:
        runner(workers_run(args.workers, args.seconds, args.concurrency, args.rounds))
    else:
        runner(run(args.seconds, args.concurrency, args.rounds, args.env, args.identity, args.policy_features,
                   args.redis_url))


if __name__ == "__main__":
    main()
