#!/usr/bin/env python3
"""Measures the Python SDK beside the Rust client, on one cluster, in one run.

Starts a cluster of `allot` processes on loopback (a gateway, a
distributor, two Rust workers offering `echo`, and one Python worker
process offering `trivial`, a handler that returns its input), then, for
each of ``--rounds`` rounds:

* throughput: ``allot bench --gateway ...`` (the Rust client) and
  ``client.map("echo", ...)`` from this process, the same task count,
  payload size and tasks in flight;
* a trivial Python handler: ``allot bench --app trivial`` (the Rust
  client, so that the Python worker is what limits the rate);
* one task's round trip: ``allot bench --concurrency 1`` beside
  ``client.submit`` in a loop (p50 and p99).

It prints each round and the medians, with the Python/Rust ratios
(``--json`` for one object). Build the extension and the binary in
release mode first::

    pip install ./python                     # or: maturin develop --release
    cargo build --release -p allot-cli
    python python/bench.py --rounds 3
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]

# Run as a script, this directory comes first on sys.path, and with it the
# source tree's `allot/`, which holds whatever `maturin develop` built last
# (a debug build, often): the installed package is the one to measure.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trivial(payload: bytes) -> bytes:
    return payload


def serve_trivial(join: str, pki: str, name: str, slots: int, threads: int) -> None:
    """The Python worker process: `trivial` until SIGTERM."""
    import allot

    # SIGTERM as Ctrl-C: `run` stops the worker and returns.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    w = allot.Worker(join=[join], pki=pki, name=name, listen="127.0.0.1:0",
                     apps={"trivial": trivial}, builtins=[], slots=slots, threads=threads)
    w.run()


class Cluster:
    def __init__(self, binary: str, slots: int, handler_threads: int) -> None:
        self.bin = binary
        self.dir = Path(tempfile.mkdtemp(prefix="allot-py-bench-"))
        self.pki = str(self.dir / "pki")
        self.procs: List[subprocess.Popen] = []
        self.run("cert", "ca", "--dir", self.pki)
        for name, role in [("gw", "gateway"), ("dist", "distributor"), ("client", "client"),
                           ("w-1", "worker"), ("w-2", "worker"), ("py-1", "worker")]:
            self.run("cert", "issue", "--dir", self.pki, "--name", name, "--role", role)
        self.gateway = f"127.0.0.1:{free_port()}"
        self.distributor = f"127.0.0.1:{free_port()}"
        self.spawn("gateway", "--name", "gw", "--listen", self.gateway, "--pki", self.pki,
                   "--set", "main=" + self.distributor)
        self.spawn("distributor", "--name", "dist", "--listen", self.distributor,
                   "--pki", self.pki, "--set-name", "main", "--gateways", self.gateway,
                   "--data-dir", str(self.dir / "data"))
        for w in ("w-1", "w-2"):
            self.spawn("worker", "--name", w, "--pki", self.pki, "--join", self.distributor,
                       "--listen", "127.0.0.1:0", "--apps", "echo", "--slots", str(slots))
        self.procs.append(subprocess.Popen(
            [sys.executable, __file__, "--serve-trivial", "--join", self.distributor,
             "--pki", self.pki, "--name", "py-1", "--slots", str(slots),
             "--handler-threads", str(handler_threads)],
        ))

    def run(self, *args: str) -> str:
        r = subprocess.run([self.bin, *args], capture_output=True, text=True, timeout=600,
                           env=dict(os.environ, ALLOT_LOG="error"))
        if r.returncode != 0:
            raise SystemExit(f"allot {' '.join(args)} failed: {r.stderr}")
        return r.stdout

    def spawn(self, *args: str) -> None:
        self.procs.append(subprocess.Popen([self.bin, *args], stdout=subprocess.DEVNULL,
                                           env=dict(os.environ, ALLOT_LOG="error")))

    def rust_bench(self, *args: str) -> Dict[str, Any]:
        out = self.run("bench", "--gateway", self.gateway, "--pki", self.pki,
                       "--name", "client", "--json", *args)
        return json.loads(out)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def percentile(sorted_us: List[float], q: float) -> float:
    return sorted_us[min(len(sorted_us) - 1, int(q * len(sorted_us)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--allot", default=str(REPO / "target" / "release" / "allot"),
                    help="the allot binary (default: target/release/allot)")
    ap.add_argument("--tasks", type=int, default=300_000, help="tasks per throughput run")
    ap.add_argument("--handler-tasks", type=int, default=200_000,
                    help="tasks per trivial-handler run")
    ap.add_argument("--latency-tasks", type=int, default=3_000,
                    help="tasks per round-trip run (one in flight)")
    ap.add_argument("--concurrency", type=int, default=256, help="tasks in flight")
    ap.add_argument("--payload", type=int, default=64, help="payload bytes")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--slots", type=int, default=1024, help="slots of each worker")
    ap.add_argument("--handler-threads", type=int, default=1,
                    help="Python threads of the trivial handler's worker")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--serve-trivial", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--join", help=argparse.SUPPRESS)
    ap.add_argument("--pki", help=argparse.SUPPRESS)
    ap.add_argument("--name", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve_trivial:
        serve_trivial(a.join, a.pki, a.name, a.slots, a.handler_threads)
        return

    import allot

    c = Cluster(a.allot, a.slots, a.handler_threads)
    rounds: List[Dict[str, float]] = []
    try:
        client = allot.Client([c.gateway], pki=c.pki, name="client")
        t0 = time.monotonic()
        while sum(1 for w in client.status() if w["state"] == "up") < 3:
            if time.monotonic() - t0 > 30:
                raise SystemExit("the workers did not come up")
            time.sleep(0.1)
        payload = b"x" * a.payload
        # Warm both clients and every worker once.
        c.rust_bench("--tasks", "20000", "--concurrency", str(a.concurrency))
        for _ in client.map("echo", (payload for _ in range(20000)), max_in_flight=a.concurrency):
            pass
        for r in range(a.rounds):
            rust = c.rust_bench("--tasks", str(a.tasks), "--concurrency", str(a.concurrency),
                                "--payload", str(a.payload))
            t = time.perf_counter()
            n = 0
            for _ in client.map("echo", (payload for _ in range(a.tasks)),
                                max_in_flight=a.concurrency):
                n += 1
            py_rate = n / (time.perf_counter() - t)
            handler = c.rust_bench("--app", "trivial", "--tasks", str(a.handler_tasks),
                                   "--concurrency", str(a.concurrency),
                                   "--payload", str(a.payload))
            t = time.perf_counter()
            n = 0
            for _ in client.map("trivial", (payload for _ in range(a.handler_tasks // 4)),
                                max_in_flight=a.concurrency):
                n += 1
            handler_py_rate = n / (time.perf_counter() - t)
            rust_one = c.rust_bench("--tasks", str(a.latency_tasks), "--concurrency", "1",
                                    "--payload", str(a.payload))
            lat = []
            for _ in range(a.latency_tasks):
                t = time.perf_counter()
                client.submit("echo", payload)
                lat.append((time.perf_counter() - t) * 1e6)
            lat.sort()
            row = {
                "rust_map_tasks_per_s": rust["tasks_per_s"],
                "python_map_tasks_per_s": py_rate,
                "map_ratio": py_rate / rust["tasks_per_s"],
                "trivial_handler_tasks_per_s": handler["tasks_per_s"],
                "trivial_handler_from_python_tasks_per_s": handler_py_rate,
                "rust_p50_us": rust_one["p50_us"],
                "rust_p99_us": rust_one["p99_us"],
                "python_p50_us": percentile(lat, 0.5),
                "python_p99_us": percentile(lat, 0.99),
                "errors": rust["errors"] + handler["errors"] + rust_one["errors"],
            }
            row["p50_ratio"] = row["python_p50_us"] / row["rust_p50_us"]
            rounds.append(row)
            if not a.json:
                print(f"round {r + 1}: " + ", ".join(f"{k}={v:,.3f}" if isinstance(v, float)
                                                    else f"{k}={v}" for k, v in row.items()),
                      flush=True)
        client.close()
    finally:
        c.stop()
    medians = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    out = {
        "tasks": a.tasks, "handler_tasks": a.handler_tasks, "latency_tasks": a.latency_tasks,
        "concurrency": a.concurrency, "payload": a.payload, "rounds": rounds,
        "median": medians, "python": sys.version.split()[0], "allot": allot.__version__,
        "extension": allot._native.__file__,
    }
    if a.json:
        print(json.dumps(out, indent=1))
    else:
        print("median: " + ", ".join(f"{k}={v:,.3f}" for k, v in medians.items()))
        print(f"extension: {allot._native.__file__}")


if __name__ == "__main__":
    main()
