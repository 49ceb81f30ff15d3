"""The client against an in-process cluster: submit, map, submit_async,
explain, status, and many threads on one client."""

import asyncio
import threading
import time

import pytest

import allot

from conftest import wait_until


def test_submit_returns_the_output_and_where_it_ran(client: allot.Client) -> None:
    r = client.submit("upper", b"hello")
    assert isinstance(r, allot.Result)
    assert r.output == b"HELLO"
    assert r.worker in ("worker-1", "worker-2")
    assert r.distributor == "dist-1"
    assert r.gateway != ""
    assert r.attempts == 1
    assert r.latency_us > 0
    assert r.status == "ok" and r.exit_code == 0
    assert "HELLO" in repr(r)
    # A str payload travels as UTF-8; no payload is empty.
    assert client.submit("echo", "grüße").output == "grüße".encode()
    assert client.submit("echo").output == b""


def test_constraints_pick_the_worker_and_client_attributes_count(client: allot.Client) -> None:
    for _ in range(5):
        assert client.submit("echo", b"x", require="server.region == 'us'").worker == "worker-2"
        assert client.submit("echo", b"x", require="server.gpu == 1").worker == "worker-1"
        # The client said region=eu when it connected.
        assert client.submit("echo", b"x", require="server.region == client.region").worker == "worker-1"
    assert client.submit("echo", b"x", prefer="server.gpu * 10", cores=1, mem="1GiB").worker == "worker-1"


def test_a_handler_learns_user_attempt_task_and_deadline(client: allot.Client) -> None:
    out = client.submit("whoami", user="alice", timeout=30).output.decode()
    user, attempt, task_id, app, left, job, index = out.split("|")
    assert (user, attempt, app, job, index) == ("alice", "1", "whoami", "None", "0")
    assert len(task_id) == 16 and int(task_id, 16) > 0
    assert 25 <= int(left) <= 30
    out = client.submit("whoami").output.decode().split("|")
    assert out[0] == "client" and out[4] == "none"


def test_async_handlers_run_on_the_workers_loop(client: allot.Client) -> None:
    assert client.submit("later", b"x").output == b"async:X"
    outs = [r.output for r in client.map("later", [str(i) for i in range(100)])]
    assert outs == [f"async:{i}".encode() for i in range(100)]


def test_map_keeps_order_and_many_in_flight(client: allot.Client) -> None:
    payloads = [f"p{i}".encode() for i in range(3000)]
    it = client.map("upper", iter(payloads), max_in_flight=64)
    outs = [r.output for r in it]
    assert outs == [p.upper() for p in payloads]
    # Unordered: every result once, in any order.
    outs = sorted(r.output for r in client.map("echo", payloads, ordered=False))
    assert outs == sorted(payloads)
    # Nothing to do: an empty iterator.
    assert list(client.map("echo", [])) == []


def test_map_reads_payloads_as_room_frees(client: allot.Client) -> None:
    read = []

    def endless():
        i = 0
        while True:
            read.append(i)
            yield str(i)
            i += 1

    it = client.map("echo", endless(), max_in_flight=16)
    first = [next(it).output for _ in range(50)]
    assert first == [str(i).encode() for i in range(50)]
    # Never more than the window ahead of what was handed out.
    assert len(read) <= 50 + 16 + 1
    assert it.in_flight <= 16
    it.close()
    with pytest.raises(StopIteration):
        next(it)


def test_map_raises_a_failed_task_in_its_turn_and_goes_on(client: allot.Client) -> None:
    it = client.map("upper", [b"a", b"b"])
    assert next(it).output == b"A"
    outs = list(client.map("whoami", [b"x"] * 3))
    assert len(outs) == 3
    mixed = client.map("boom", [b"1"], return_exceptions=True)
    (e,) = list(mixed)
    assert isinstance(e, allot.TaskFailed) and "cannot take 1" in e.message
    it = client.map("echo", [b"ok", b"x"], require="server.mem >= 1TiB")
    with pytest.raises(allot.NoMatch) as ex:
        next(it)
    assert ex.value.explain["verdict"] == "fail"
    with pytest.raises(allot.NoMatch):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_map_stops_at_a_payload_it_cannot_send(client: allot.Client) -> None:
    it = client.map("echo", [b"a", 42, b"c"])
    assert next(it).output == b"a"
    with pytest.raises(TypeError, match="bytes, bytearray or str, not int"):
        next(it)
    with pytest.raises(StopIteration):
        next(it)

    def broken():
        yield b"first"
        raise OSError("the source failed")

    it = client.map("echo", broken())
    assert next(it).output == b"first"
    with pytest.raises(OSError, match="the source failed"):
        next(it)


def test_closing_a_map_cancels_what_is_in_flight(cluster: allot.LocalCluster) -> None:
    c = cluster.client("canceller")
    try:
        t0 = time.monotonic()
        it = c.map("sleep", ["10000"] * 20, max_in_flight=20)
        wait_until("the sleeps run", lambda: sum(w["reserved_slots"] for w in c.status()) >= 20)
        it.close()
        # Their slots come back long before the sleeps would end.
        wait_until("slots freed", lambda: sum(w["reserved_slots"] for w in c.status()) == 0)
        assert time.monotonic() - t0 < 8
    finally:
        c.close()


def test_submit_async_is_awaitable_and_cancellable(client: allot.Client) -> None:
    async def main():
        rs = await asyncio.gather(*[client.submit_async("upper", f"a{i}") for i in range(500)])
        assert [r.output for r in rs] == [f"A{i}".encode() for i in range(500)]
        with pytest.raises(allot.TaskFailed, match="cannot take z"):
            await client.submit_async("boom", b"z")
        fut = client.submit_async("sleep", b"20000")
        await asyncio.sleep(0.2)
        fut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await fut
        # The cancelled sleep gave its slot back.
        t0 = time.monotonic()
        while sum(w["reserved_slots"] for w in client.status()) > 0:
            assert time.monotonic() - t0 < 5, "the cancelled task still holds its slot"
            await asyncio.sleep(0.05)

    asyncio.run(main())


def test_submit_async_needs_a_running_loop(client: allot.Client) -> None:
    with pytest.raises(RuntimeError, match="no running event loop"):
        client.submit_async("echo", b"x")


def test_many_python_threads_share_one_client(client: allot.Client) -> None:
    errors = []
    done = []

    def work(t: int) -> None:
        try:
            for i in range(150):
                p = f"t{t}-{i}".encode()
                if i % 3 == 0:
                    outs = [r.output for r in client.map("upper", [p, p + b"!"])]
                    assert outs == [p.upper(), p.upper() + b"!"]
                else:
                    assert client.submit("upper", p).output == p.upper()
            done.append(t)
        except BaseException as e:  # noqa: B902 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(12)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not errors, errors
    assert sorted(done) == list(range(12))


def test_the_gil_is_released_while_a_task_runs(client: allot.Client) -> None:
    ticks = []
    stop = threading.Event()

    def ticker() -> None:
        while not stop.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.01)

    th = threading.Thread(target=ticker)
    th.start()
    try:
        client.submit("sleep", b"500")
    finally:
        stop.set()
        th.join()
    assert len(ticks) >= 20, f"only {len(ticks)} ticks while submit waited"


def test_explain_and_status(cluster: allot.LocalCluster, client: allot.Client) -> None:
    e = client.explain("echo", require="server.mem >= 1TiB")
    assert e["verdict"] == "fail" and not e["matches"]
    assert e["total"] == 2 and e["matched"] == 0
    (clause,) = [c for c in e["clauses"] if c["clause"] == "server.mem >= 1TiB"]
    assert clause["eliminated"] == 2
    assert {n["worker"] for n in e["nearest"]} <= {"worker-1", "worker-2"}
    assert e["summary"].startswith("would NOT match")
    e = client.explain("echo", require="server.region == 'eu'")
    assert e["verdict"] == "match" and e["best"] == "worker-1" and e["matched"] == 1
    workers = {w["name"]: w for w in client.status()}
    assert set(workers) == {"worker-1", "worker-2"}
    w1 = workers["worker-1"]
    assert w1["state"] == "up" and w1["region"] == "eu" and w1["slots"] == 512
    assert "upper" in w1["apps"] and w1["mem"] == 8 << 30
    assert client.distributor == cluster.distributors[0]
