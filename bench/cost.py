"""`python bench/cost.py`: what one small call costs the proxy, in instructions, for the floor and for scopegate.

req/s and CPU seconds on a shared 2-core machine swing by more than the changes worth measuring; instruction counts
do not. Each proxy runs under valgrind's callgrind with instrumentation off; after warm-up it is switched on for
exactly `--calls` sequential small `tools/call` POSTs (the bench's upstream, policy and PAT, one keep-alive
connection), then off again. The figure is the proxy process's instructions divided by the calls: the same build,
inputs and environment give the same count, whatever else the machine is doing. Needs valgrind (Debian package).
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from run import BENCH_FOLDER, BENCH_POLICY, CALL, ROOT, headers, identity_args  # bench/ is on sys.path: a script

from proxy.demo.run import free_port, wait_for_port


def call(conn: http.client.HTTPConnection) -> None:
    conn.request("POST", "/mcp", body=CALL, headers=headers("tools/call", "get_period_status"))
    response = conn.getresponse()
    body = response.read()
    if response.status != 200 or b'"isError":true' in body:
        raise SystemExit(f"cost: the call was not answered: HTTP {response.status} {body[:200]!r}")


def instructions(command: list[str], port: int, calls: int) -> int:
    out = tempfile.mktemp(prefix="callgrind-", dir=BENCH_FOLDER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCOPEGATE_")}
    process = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                                *command], env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300  # Python starts slowly under valgrind
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                call(conn)
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit(f"cost: {' '.join(command)} did not start") from None
                time.sleep(1)
        for _ in range(20):
            call(conn)
        subprocess.run(["callgrind_control", "-i", "on", str(process.pid)], check=True, capture_output=True)
        for _ in range(calls):
            call(conn)
        subprocess.run(["callgrind_control", "-i", "off", str(process.pid)], check=True, capture_output=True)
        conn.close()
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
        Path(out).unlink(missing_ok=True)
    found = re.search(rb"Collected : (\d+)", err)
    if found is None:
        raise SystemExit("cost: callgrind reported no count")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--identity", action="store_true",
                        help="also count scopegate with the policy's upstream_identity on (a read's assertion reused)")
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("cost: needs valgrind (apt-get install valgrind)")
    py = sys.executable
    up_port = free_port()
    upstream = subprocess.Popen([py, str(ROOT / "bench" / "upstream.py"), "--port", str(up_port)])
    try:
        wait_for_port(up_port, upstream, "cost: bench upstream")
        url = f"http://127.0.0.1:{up_port}/mcp"
        floor_port, gate_port = free_port(), free_port()
        floor = instructions([py, str(ROOT / "bench" / "floor.py"), "--port", str(floor_port), "--upstream", url],
                             floor_port, args.calls)
        gate = instructions([py, "-m", "proxy", "serve", "--upstream", url, "--listen", f"127.0.0.1:{gate_port}",
                             "--log-level", "warning", "--pat-file", str(BENCH_FOLDER / "pats.yaml"), "--policy",
                             str(BENCH_POLICY), "--metrics-listen", "127.0.0.1:0"], gate_port, args.calls)
        asserted = None
        if args.identity:
            id_port = free_port()
            asserted = instructions([py, "-m", "proxy", "serve", "--upstream", url, "--listen",
                                     f"127.0.0.1:{id_port}", "--log-level", "warning", "--pat-file",
                                     str(BENCH_FOLDER / "pats.yaml"), "--metrics-listen", "127.0.0.1:0",
                                     *identity_args(id_port, 30)], id_port, args.calls)
    finally:
        upstream.terminate()
        upstream.wait(10)
    print(f"instructions per small tools/call ({args.calls} sequential calls, callgrind):")
    print(f"  floor      {floor / args.calls / 1000:8.0f}k")
    print(f"  scopegate  {gate / args.calls / 1000:8.0f}k   {gate / floor:.2f}x the floor")
    if asserted is not None:
        print(f"  + identity {asserted / args.calls / 1000:8.0f}k   {asserted / floor:.2f}x the floor, "
              f"{asserted / gate:.3f}x scopegate without it")


if __name__ == "__main__":
    main()
