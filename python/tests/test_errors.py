"""Every exception the SDK raises, from the cause a user meets."""

import os
import tempfile

import pytest

import allot

from conftest import free_port, wait_until, workers_up


def test_the_exceptions_form_one_family_with_the_standard_ones() -> None:
    for cls in (allot.Unavailable, allot.Timeout, allot.TaskFailed, allot.NoMatch, allot.PkiError):
        assert issubclass(cls, allot.AllotError)
    assert issubclass(allot.Unavailable, ConnectionError)
    assert issubclass(allot.Timeout, TimeoutError)


def test_a_failing_handler_fails_its_task_with_type_and_message(client: allot.Client) -> None:
    with pytest.raises(allot.TaskFailed) as e:
        client.submit("boom", b"this")
    assert str(e.value) == "ValueError: cannot take this"
    assert e.value.exit_code == 1
    assert e.value.worker in ("worker-1", "worker-2")
    assert e.value.task_id is not None and e.value.attempts == 1
    with pytest.raises(allot.TaskFailed, match=r"^KeyError: 'missing'$"):
        client.submit("async_boom", b"")


def test_a_handler_that_returns_no_bytes_fails_its_task_saying_so(client: allot.Client) -> None:
    with pytest.raises(allot.TaskFailed) as e:
        client.submit("not_bytes", b"text")
    assert "handler `not_bytes` returned str, not bytes" in str(e.value)
    assert "encode" in str(e.value)


def test_a_failing_command_gives_its_exit_code_and_output() -> None:
    with allot.LocalCluster(workers=0) as cluster:
        cluster.issue("cmd-worker")
        w = allot.Worker(
            join=cluster.distributors, pki=cluster.pki, name="cmd-worker", listen="127.0.0.1:0",
            commands={"fails": "echo partial; echo broken >&2; exit 3"},
        )
        with w, cluster.client() as c:
            wait_until("the worker is up", lambda: workers_up(c, 1))
            with pytest.raises(allot.TaskFailed) as e:
                c.submit("fails")
            assert e.value.exit_code == 3
            assert e.value.output == b"partial\n"
            assert "broken" in e.value.message
            assert e.value.worker == "cmd-worker"


def test_no_worker_that_matches_is_a_no_match_with_the_explanation(client: allot.Client) -> None:
    with pytest.raises(allot.NoMatch) as e:
        client.submit("echo", b"x", require="server.mem >= 1TiB && server.region == 'eu'")
    ex = e.value.explain
    assert ex["verdict"] == "fail" and ex["matched"] == 0 and ex["total"] == 2
    by_clause = {c["clause"]: c["eliminated"] for c in ex["clauses"]}
    assert by_clause["server.mem >= 1TiB"] == 2
    assert by_clause["server.region == 'eu'"] == 1
    assert ex["nearest"][0]["worker"] == "worker-1"
    assert "server.mem >= 1TiB" in str(e.value)
    with pytest.raises(allot.NoMatch):
        client.submit("no-such-app", b"x")


def test_a_task_past_its_timeout_is_a_timeout(client: allot.Client) -> None:
    with pytest.raises(allot.Timeout) as e:
        client.submit("sleep", b"5000", timeout=0.3)
    assert isinstance(e.value, TimeoutError)


def test_a_bad_expression_is_a_value_error_naming_the_clause() -> None:
    with allot.LocalCluster(workers=1) as cl:
        c = cl.client()
        # A syntax error is found before anything is sent.
        with pytest.raises(ValueError) as e:
            c.submit("echo", b"", require="server.cores >= && server.mem > 1GiB")
        text = str(e.value)
        assert text.startswith("bad expression: require, column 17: expected a number")
        # The expression again, a caret under the column.
        assert "\n    server.cores >= && server.mem > 1GiB\n" in text
        assert text.endswith("\n" + " " * 20 + "^")
        with pytest.raises(ValueError, match="prefer, column"):
            c.submit("echo", prefer="server.load *")
        # Parsed, but of the wrong type: the distributor says so.
        with pytest.raises(ValueError, match="require must be a condition"):
            c.submit("echo", require="server.mem")
        with pytest.raises(ValueError, match="require must be a condition"):
            c.explain("echo", require="server.mem")
        with pytest.raises(ValueError, match="not a size"):
            c.submit("echo", mem="lots")
        c.close()


def test_nothing_listening_is_unavailable_naming_the_address() -> None:
    with allot.LocalCluster(workers=0) as cl:
        port = free_port()
        with pytest.raises(allot.Unavailable) as e:
            allot.Client([f"127.0.0.1:{port}"], pki=cl.pki, retry_for=0, connect_timeout=0.3)
        assert f"127.0.0.1:{port}" in str(e.value)
        assert isinstance(e.value, ConnectionError)
        with pytest.raises(allot.Unavailable, match="no distributor answered|no gateway"):
            allot.Client(distributor=f"127.0.0.1:{port}", pki=cl.pki, retry_for=0, connect_timeout=0.3)


def test_a_closed_client_says_so(cluster: allot.LocalCluster) -> None:
    c = cluster.client("closer")
    c.close()
    with pytest.raises(allot.AllotError, match="closed"):
        c.submit("echo", b"x")


def test_a_wrong_pki_directory_names_the_missing_file_and_the_command() -> None:
    with tempfile.TemporaryDirectory() as d:
        with pytest.raises(allot.PkiError) as e:
            allot.Client(["127.0.0.1:1"], pki=d, name="alice")
        ca = os.path.join(d, "ca.pem")
        assert e.value.path == ca
        assert f"{ca} not found" in str(e.value)
        assert f"allot cert ca --dir {d}" in str(e.value)
    with allot.LocalCluster(workers=0) as cl:
        with pytest.raises(allot.PkiError) as e:
            allot.Client(cl.gateways, pki=cl.pki, name="nobody")
        assert e.value.path == os.path.join(cl.pki, "nobody.pem")
        assert f"allot cert issue --dir {cl.pki} --name nobody --role ROLE" in str(e.value)
        w = allot.Worker(join=cl.distributors, pki=cl.pki, name="no-cert", apps={"e": lambda p: p})
        with pytest.raises(allot.PkiError, match="no certificate for node `no-cert`"):
            w.start()
        assert not w.running


def test_bad_arguments_are_value_and_type_errors(client: allot.Client) -> None:
    with pytest.raises(ValueError, match="not an address"):
        allot.Client(["nowhere"], pki="pki")
    with pytest.raises(ValueError, match="gateways"):
        allot.Client(pki="pki")
    with pytest.raises(ValueError, match="max_in_flight"):
        client.map("echo", [b"x"], max_in_flight=0)
    with pytest.raises(TypeError, match="must be a str, int, float or bool"):
        allot.LocalCluster(workers=1, labels={"x": [1]})
    with pytest.raises(TypeError, match="taking"):
        allot.LocalCluster(workers=1, apps={"x": 42})
    with pytest.raises(TypeError, match=r"must take \(payload, task\) or \(payload\)"):
        allot.LocalCluster(workers=1, apps={"x": lambda: b""})
    with pytest.raises(ValueError, match="timeout must be a number of seconds"):
        client.submit("echo", timeout=-1)
