"""What the tests share: apps (Python handlers), an in-process cluster,
and clusters of real `allot` processes on loopback that are stopped when
their test ends.

The `allot` binary is ``$ALLOT_BIN`` if set (``.ci/run`` sets it: a missing
binary is then a failure), else the workspace's ``target/debug/allot`` or
``target/release/allot``; tests that need one are skipped without it.
"""

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

import allot

REPO = Path(__file__).resolve().parents[2]


def upper(payload: bytes, task: allot.TaskInfo) -> bytes:
    return payload.upper()


def whoami(payload: bytes, task: allot.TaskInfo) -> bytes:
    """What the handler was told about its task."""
    left = task.remaining()
    return (
        f"{task.user}|{task.attempt}|{task.task_id}|{task.app}|"
        f"{'none' if left is None else round(left)}|{task.job}|{task.index}"
    ).encode()


def boom(payload: bytes) -> bytes:
    raise ValueError("cannot take " + payload.decode())


def not_bytes(payload: bytes) -> str:
    return payload.decode()


def spin(payload: bytes, task: allot.TaskInfo) -> bytes:
    """Pure-Python computing (holds the GIL between switch intervals) for
    the payload's number of seconds."""
    until = time.monotonic() + float(payload.decode())
    n = 0
    while time.monotonic() < until:
        n += 1
    return str(n).encode()


async def later(payload: bytes, task: allot.TaskInfo) -> bytes:
    await asyncio.sleep(0.01)
    return b"async:" + payload.upper()


async def async_boom(payload: bytes) -> bytes:
    await asyncio.sleep(0)
    raise KeyError("missing")


APPS = {
    "upper": upper,
    "whoami": whoami,
    "boom": boom,
    "not_bytes": not_bytes,
    "spin": spin,
    "later": later,
    "async_boom": async_boom,
}


@pytest.fixture(scope="session")
def cluster() -> Iterator[allot.LocalCluster]:
    """Two workers with the test apps, many slots (for pipelining)."""
    with allot.LocalCluster(
        workers=2,
        apps=APPS,
        slots=512,
        threads=4,
        labels=[{"region": "eu", "gpu": True}, {"region": "us", "gpu": False}],
    ) as c:
        yield c


@pytest.fixture(scope="session")
def client(cluster: allot.LocalCluster) -> Iterator[allot.Client]:
    with cluster.client(attrs={"region": "eu"}) as c:
        yield c


def allot_binary() -> Optional[str]:
    env = os.environ.get("ALLOT_BIN")
    if env:
        assert Path(env).is_file(), f"ALLOT_BIN={env} does not exist"
        return env
    for profile in ("debug", "release"):
        p = REPO / "target" / profile / "allot"
        if p.is_file():
            return str(p)
    return None


@pytest.fixture(scope="session")
def allot_bin() -> str:
    b = allot_binary()
    if b is None:
        pytest.skip("no allot binary: build it (cargo build -p allot-cli) or set ALLOT_BIN")
    return b


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """A PKI and `allot` node processes (gateway, distributor), killed when
    the test ends."""

    def __init__(self, binary: str) -> None:
        self.bin = binary
        self.dir = Path(tempfile.mkdtemp(prefix="allot-py-test-"))
        self.pki = str(self.dir / "pki")
        self.procs: List[subprocess.Popen] = []
        self.run("cert", "ca", "--dir", self.pki)

    def run(self, *args: str, input: Optional[bytes] = None, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ, ALLOT_LOG="warn")
        r = subprocess.run([self.bin, *args], input=input, capture_output=True, env=env, timeout=60)
        if check:
            assert r.returncode == 0, f"allot {args} failed: {r.stderr.decode()}"
        return r

    def issue(self, name: str, role: str) -> None:
        self.run("cert", "issue", "--dir", self.pki, "--name", name, "--role", role)

    def spawn(self, *args: str) -> subprocess.Popen:
        env = dict(os.environ, ALLOT_LOG="warn")
        p = subprocess.Popen(
            [self.bin, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.procs.append(p)
        return p

    def cluster(self, heartbeat_ms: int = 200) -> "tuple[str, str]":
        """A gateway and a distributor (set `main`) with no workers; returns
        their addresses. A worker is silent for 3 heartbeats before the
        distributor marks it down."""
        self.issue("gw", "gateway")
        self.issue("dist", "distributor")
        gw = f"127.0.0.1:{free_port()}"
        dist = f"127.0.0.1:{free_port()}"
        self.spawn(
            "gateway", "--name", "gw", "--listen", gw, "--pki", self.pki,
            "--set", "main=" + dist,
        )
        self.spawn(
            "distributor", "--name", "dist", "--listen", dist, "--pki", self.pki,
            "--set-name", "main", "--gateways", gw,
            "--data-dir", str(self.dir / "data-dist"),
            "--heartbeat-ms", str(heartbeat_ms), "--missed-heartbeats", "3",
        )
        return gw, dist

    def worker(self, name: str, join: str, *args: str) -> subprocess.Popen:
        """An `allot worker` process."""
        self.issue(name, "worker")
        return self.spawn(
            "worker", "--name", name, "--pki", self.pki, "--join", join,
            "--listen", "127.0.0.1:0", *args,
        )

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
            if p.stderr is not None:
                p.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def processes(allot_bin: str) -> Iterator[Processes]:
    p = Processes(allot_bin)
    try:
        yield p
    finally:
        p.stop()


def wait_until(what: str, ok, within: float = 15.0, every: float = 0.05):
    """Polls ``ok()`` until it returns something true; returns that."""
    until = time.monotonic() + within
    while True:
        v = ok()
        if v:
            return v
        if time.monotonic() > until:
            raise AssertionError(f"{what}: not within {within} s")
        time.sleep(every)


def workers_up(client: allot.Client, n: int) -> bool:
    try:
        return sum(1 for w in client.status() if w["state"] == "up") >= n
    except allot.AllotError:
        return False
