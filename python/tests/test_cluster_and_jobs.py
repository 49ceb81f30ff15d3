"""The in-process cluster's life, and jobs the cluster keeps."""

import os

import pytest

import allot


def test_a_local_cluster_stops_everything_and_removes_its_certificates() -> None:
    with allot.LocalCluster(workers=3, distributors=2, apps={"twice": lambda p: p * 2}) as c:
        assert len(c.gateways) == 1 and len(c.distributors) == 2
        assert c.workers == ["worker-1", "worker-2", "worker-3"]
        pki = c.pki
        assert os.path.isfile(os.path.join(pki, "ca.pem"))
        # Searches again for half a second once the cluster is gone.
        client = c.client(retry_for=0.5)
        assert client.submit("twice", b"ab").output == b"abab"
        assert client.submit("sha256", b"").output.startswith(b"e3b0c442")
        # Another certificate, issued on demand.
        other = c.client("someone-else", attrs={"team": "x"})
        assert other.name == "someone-else"
        assert other.submit("echo", b"hi").output == b"hi"
        assert "LocalCluster(" in repr(c)
    assert not os.path.exists(pki), "the certificates outlived the cluster"
    with pytest.raises(allot.Unavailable, match="retried for"):
        client.submit("echo", b"x")
    with pytest.raises(allot.AllotError, match="stopped"):
        c.client()
    c.stop()  # twice is harmless


def test_an_array_job_runs_python_handlers_that_know_their_index(cluster: allot.LocalCluster, client: allot.Client) -> None:
    job = client.submit_job("whoami", array=(1, 20), payload=b"x", user="carol")
    assert job.tasks == 20 and job.id.startswith("main/dist-1/")
    summary = job.wait(timeout=30)
    assert summary["done"] == 20 and summary["failed"] == 0 and summary["user"] == "carol"
    rows = job.outputs()
    assert [r["index"] for r in rows] == list(range(1, 21))
    for r in rows:
        user, attempt, task_id, app, _left, jid, index = r["output"].decode().split("|")
        assert (user, app, jid, int(index)) == ("carol", "whoami", job.id, r["index"])
        assert task_id == f"{job.id}/{r['index']}"
        assert r["state"] == "done" and r["worker"].startswith("worker-")
    # Another client finds it by its id, and in the list.
    with cluster.client("reader") as other:
        again = other.job(job.id)
        assert again.tasks == 20 and again.summary()["done"] == 20
        assert job.id in [j["job"] for j in other.jobs()]


def test_a_lines_job_and_its_failures(client: allot.Client) -> None:
    job = client.submit_job("upper", lines=b"one\ntwo\nthree\n")
    assert job.tasks == 3
    job.wait(timeout=30)
    assert [r["output"] for r in job.outputs()] == [b"ONE", b"TWO", b"THREE"]
    bad = client.submit_job("boom", lines="a\nb\n")
    s = bad.wait(timeout=30)
    assert s["failed"] == 2
    assert all("ValueError: cannot take" in r["message"] for r in bad.outputs())


def test_a_job_is_cancelled_and_a_wait_times_out(client: allot.Client) -> None:
    job = client.submit_job("sleep", array=(0, 9), payload=b"60000")
    with pytest.raises(allot.Timeout, match="did not finish"):
        job.wait(timeout=0.5)
    assert job.cancel() == 10
    s = job.wait(timeout=30)
    assert s["cancelled"] == 10
    assert {r["state"] for r in job.outputs()} == {"cancelled"}


def test_job_arguments_are_checked(client: allot.Client) -> None:
    with pytest.raises(ValueError, match="not both"):
        client.submit_job("echo", array=(1, 2), lines=b"x")
    with pytest.raises(ValueError, match="above the last"):
        client.submit_job("echo", array=(5, 1))
    with pytest.raises(ValueError, match="bad expression"):
        client.submit_job("echo", require="server.cores >")
    with pytest.raises(allot.AllotError, match="not a job id"):
        client.job("nonsense")
