"""Against real `allot` processes: a Python worker serving the Rust CLI and
a Python client, a handler that computes past the heartbeat window, a
Python client of Rust workers, `Worker.run` ended by Ctrl-C."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import allot

from conftest import APPS, Processes, wait_until, workers_up


def python_worker(p: Processes, dist: str, name: str = "py-1", **kw) -> allot.Worker:
    p.issue(name, "worker")
    return allot.Worker(
        join=[dist], pki=p.pki, name=name, listen="127.0.0.1:0", apps=APPS, **kw
    )


def test_a_python_handler_serves_the_rust_cli_and_a_python_client(processes: Processes) -> None:
    gw, dist = processes.cluster()
    processes.issue("client", "client")
    with python_worker(processes, dist, labels={"lang": "python"}) as w:
        assert w.running
        with allot.Client([gw], pki=processes.pki, name="client") as c:
            wait_until("the Python worker is up", lambda: workers_up(c, 1))
            (st,) = c.status()
            assert st["name"] == "py-1" and st["lang"] == "python"
            assert {"upper", "later", "echo"} <= set(st["apps"])
            # The Rust command line, through the gateway.
            r = processes.run(
                "submit", "--pki", processes.pki, "--name", "client", "--gateway", gw,
                "--app", "upper", "--input", "-", "--json", input=b"from rust",
            )
            out = json.loads(r.stdout)
            assert out["output"] == "FROM RUST" and out["worker"] == "py-1"
            assert out["status"] == "ok"
            r = processes.run(
                "submit", "--pki", processes.pki, "--name", "client", "--gateway", gw,
                "--app", "later", "--input", "-", input=b"x",
            )
            assert r.stdout == b"async:X"
            # A failing handler fails the CLI's task with its message.
            r = processes.run(
                "submit", "--pki", processes.pki, "--name", "client", "--gateway", gw,
                "--app", "boom", "--input", "-", input=b"it", check=False,
            )
            assert r.returncode != 0
            assert b"ValueError: cannot take it" in r.stderr
            # And a Python client.
            assert c.submit("upper", b"from python").output == b"FROM PYTHON"
            outs = [r.output for r in c.map("upper", [b"a", b"b", b"c"])]
            assert outs == [b"A", b"B", b"C"]
            info = c.submit("whoami", user="bob").output.decode().split("|")
            assert info[0] == "bob" and info[1] == "1"
    assert not w.running


def test_a_handler_computing_past_the_heartbeat_window_keeps_its_worker_up(processes: Processes) -> None:
    # Heartbeats every 200 ms, marked down after 3 missed: a 600 ms window.
    gw, dist = processes.cluster(heartbeat_ms=200)
    processes.issue("client", "client")
    with python_worker(processes, dist, threads=2), allot.Client([gw], pki=processes.pki) as c:
        wait_until("the worker is up", lambda: workers_up(c, 1))
        result = {}

        def long_task() -> None:
            result["spin"] = c.submit("spin", b"3")

        t = threading.Thread(target=long_task)
        t0 = time.monotonic()
        t.start()
        seen = []
        served = []
        while t.is_alive():
            (st,) = c.status()
            seen.append((st["state"], st["last_report_ms"]))
            if len(served) < 5:
                # Other tasks are served meanwhile, on the other thread.
                served.append(c.submit("upper", b"meanwhile").output)
            time.sleep(0.1)
        t.join()
        assert time.monotonic() - t0 >= 3
        assert int(result["spin"].output) > 0
        assert result["spin"].attempts == 1, "the task ran once: its worker was never lost"
        # Asked all along, the distributor never saw it miss its window.
        assert len(seen) >= 10
        assert all(state == "up" for state, _ in seen), seen
        assert served == [b"MEANWHILE"] * 5


def test_a_python_client_of_rust_worker_processes(processes: Processes) -> None:
    gw, dist = processes.cluster()
    processes.issue("client", "client")
    processes.worker("rust-1", dist, "--apps", "echo,sha256,sleep", "--slots", "64",
                     "--label", "region=eu")
    processes.worker("rust-2", dist, "--apps", "echo,sha256,sleep", "--slots", "64",
                     "--label", "region=us")
    with allot.Client([gw], pki=processes.pki, attrs={"region": "us"}) as c:
        wait_until("both workers are up", lambda: workers_up(c, 2))
        r = c.submit("sha256", b"abc", require="server.region == client.region")
        assert r.output == b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        assert r.worker == "rust-2"
        outs = [r.output for r in c.map("echo", [str(i) for i in range(2000)])]
        assert outs == [str(i).encode() for i in range(2000)]
        job = c.submit_job("sha256", array=(1, 5), payload=b"abc")
        summary = job.wait(timeout=30)
        assert summary["done"] == 5 and summary["failed"] == 0
        assert [row["index"] for row in job.outputs()] == [1, 2, 3, 4, 5]
        assert any(j["job"] == job.id for j in c.jobs())


def test_worker_run_serves_until_ctrl_c(processes: Processes) -> None:
    gw, dist = processes.cluster()
    processes.issue("client", "client")
    processes.issue("py-run", "worker")
    script = textwrap.dedent(
        f"""
        import allot
        w = allot.Worker(join=[{dist!r}], pki={processes.pki!r}, name="py-run",
                         listen="127.0.0.1:0", apps={{"upper": lambda p, t: p.upper()}})
        w.run()
        print("stopped", w.running, flush=True)
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        with allot.Client([gw], pki=processes.pki) as c:
            wait_until("the worker is up", lambda: workers_up(c, 1))
            assert c.submit("upper", b"run").output == b"RUN"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
            assert proc.returncode == 0, err.decode()
            assert out.decode().strip() == "stopped False"
            wait_until("the worker is gone",
                       lambda: all(w["state"] == "down" for w in c.status()) or not c.status())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
