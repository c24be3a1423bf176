"""Memory: what an idle open SSE stream costs scopegate, and whether a long mixed load makes it grow.

    python bench/soak.py --streams 1000            # RSS per idle open stream, scopegate's and the floor's
    python bench/soak.py --minutes 10              # mixed soak: RSS and open FDs sampled, the slope printed

Both start the fixed-answer upstream (bench/upstream.py) and scopegate as `make bench` does. An idle stream is a
`tools/call` of `tick` that sends one event, then waits (the upstream sleeps between events): the proxy holds the
client's connection, the upstream's and the relay in between. The figure is the RSS the process gained while the
streams opened (after a warm-up of the same requests), divided by their number; the same streams are then opened
through the bare pass-through (bench/floor.py), for scale: what any Python proxy on aiohttp pays per stream. The
soak runs small calls, 1,000-tool lists and short SSE streams at once, each on fresh and reused connections, and
samples scopegate's RSS and FD count every few seconds; the slope over the second half (after warm-up) says whether
anything grows. Not part of `make test`: it measures, it asserts nothing; the machine it runs on is shared, so read
figures as what they are.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BENCH_FOLDER, BENCH_POLICY, CALL, LIST, ROOT, headers, stop, tick

from proxy.demo.run import free_port, wait_for_port


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in points) / var if var else 0.0


def start(flags: tuple[str, ...] = ()) -> tuple[list[subprocess.Popen[bytes]], str, int, str]:
    py = sys.executable
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")}
    up_port, gate_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/mcp"
    upstream = subprocess.Popen([py, str(ROOT / "bench" / "upstream.py"), "--port", str(up_port)], env=env)
    wait_for_port(up_port, upstream, "soak: upstream")
    gate = subprocess.Popen([py, "-m", "proxy", "serve", "--upstream", upstream_url, "--listen",
                             f"127.0.0.1:{gate_port}", "--log-level", "warning", "--pat-file",
                             str(BENCH_FOLDER / "pats.yaml"), "--policy", str(BENCH_POLICY), "--metrics-listen",
                             "127.0.0.1:0", *flags], env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    wait_for_port(gate_port, gate, "soak: scopegate")
    return [upstream, gate], f"http://127.0.0.1:{gate_port}/mcp", gate.pid, upstream_url


async def idle_streams(url: str, pid: int, count: int, name: str = "scopegate") -> float:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        # Warm up: the same kinds of request first, so what is measured is the streams, not first-use allocations.
        for _ in range(50):
            async with http.post(url, data=tick(1, 0.0), headers=headers("tools/call", "tick")) as resp:
                await resp.read()
        await asyncio.sleep(1)
        before_rss, before_fds = rss_kb(pid), fds(pid)
        opened: list[aiohttp.ClientResponse] = []
        body = tick(2, 600.0)  # one event, then ten minutes of silence
        for _ in range(count):
            resp = await http.post(url, data=body, headers=headers("tools/call", "tick"))
            if resp.status != 200:
                raise SystemExit(f"soak: stream {len(opened) + 1} was answered {resp.status}")
            await resp.content.readuntil(b"\n\n")  # the first event arrived: the stream is open end to end
            opened.append(resp)
        await asyncio.sleep(2)
        after_rss, after_fds = rss_kb(pid), fds(pid)
        per = (after_rss - before_rss) / count
        print(f"{count} idle open SSE streams: {name} RSS {before_rss} KB -> {after_rss} KB, "
              f"{per:.1f} KB per stream; FDs {before_fds} -> {after_fds} ({(after_fds - before_fds) / count:.1f} "
              f"per stream: the client's connection and the upstream's)")
        for resp in opened:
            resp.close()
        return per


def start_floor(upstream_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    floor = subprocess.Popen([sys.executable, str(ROOT / "bench" / "floor.py"), "--port", str(port), "--upstream",
                              upstream_url])
    wait_for_port(port, floor, "soak: floor")
    return floor, f"http://127.0.0.1:{port}/mcp"


async def soak(url: str, pid: int, minutes: float, interval: float) -> None:
    stop = time.monotonic() + minutes * 60
    counts = {"call": 0, "list": 0, "sse": 0, "errors": 0}

    async def loop(kind: str, body: bytes, hdrs: dict[str, str], fresh: bool) -> None:
        connector = aiohttp.TCPConnector(force_close=fresh)
        async with aiohttp.ClientSession(connector=connector) as http:
            while time.monotonic() < stop:
                try:
                    async with http.post(url, data=body, headers=hdrs) as resp:
                        await resp.read()
                        counts[kind if resp.status == 200 else "errors"] += 1
                except aiohttp.ClientError:
                    counts["errors"] += 1

    samples: list[tuple[float, float, float]] = []

    async def sample() -> None:
        started = time.monotonic()
        while time.monotonic() < stop:
            samples.append(((time.monotonic() - started) / 60, rss_kb(pid), fds(pid)))
            await asyncio.sleep(interval)

    call_h, list_h, sse_h = headers("tools/call", "get_period_status"), headers("tools/list"), headers("tools/call",
                                                                                                      "tick")
    await asyncio.gather(
        sample(),
        *(loop("call", CALL, call_h, fresh) for fresh in (False, False, True)),
        loop("list", LIST, list_h, False),
        *(loop("sse", tick(5, 0.01), sse_h, fresh) for fresh in (False, True)),
    )
    for minute, rss, fd in samples[:: max(1, len(samples) // 20)]:
        print(f"  {minute:6.2f} min  RSS {rss / 1024:7.1f} MB  FDs {fd:5.0f}")
    half = samples[len(samples) // 2 :]
    print(f"requests: {counts}")
    print(f"second half ({len(half)} samples): RSS slope {slope([(m, r) for m, r, _ in half]):+.1f} KB/min, "
          f"FD slope {slope([(m, f) for m, _, f in half]):+.2f} FDs/min; whole run RSS "
          f"{samples[0][1] / 1024:.1f} -> {samples[-1][1] / 1024:.1f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=0, help="measure RSS per idle open SSE stream")
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the mixed soak")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    args = parser.parse_args()
    # One credential holds every idle stream: its limits (calls in flight, upstream connections) made room for them.
    room = str(args.streams + 100)
    flags = ("--max-calls-per-credential", room, "--call-connections", room) if args.streams else ()
    processes, url, pid, upstream_url = start(flags)
    try:
        if args.streams:
            ours = asyncio.run(idle_streams(url, pid, args.streams))
            # The same streams through the bare pass-through (bench/floor.py, aiohttp on both sides): the scale for
            # scopegate's figure (what two connections, their parsers, buffers and tasks cost in Python anyway).
            floor, floor_url = start_floor(upstream_url)
            processes.append(floor)
            floors = asyncio.run(idle_streams(floor_url, floor.pid, args.streams, "floor"))
            print(f"per idle stream: scopegate {ours:.1f} KB, the floor {floors:.1f} KB ({ours - floors:+.1f} KB)")
        else:
            asyncio.run(soak(url, pid, args.minutes, args.interval))
    finally:
        stop(processes)


if __name__ == "__main__":
    main()
