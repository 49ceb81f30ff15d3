"""The dashboard in a real browser: `allot up` serves it, headless Chromium
(Debian's, driven by Playwright) opens it, sees every worker and the
completed count rise as tasks run, and saves a screenshot to
target/dashboard.png.

Needs /usr/bin/chromium (Debian's `chromium` package) and the Python
package `playwright` (no browser download: Playwright drives the system's
Chromium). `.ci/run` installs both and sets ALLOT_BROWSER_TEST=required,
which makes a missing one a failure; elsewhere the test is skipped, saying
which is missing.
"""

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import REPO

CHROMIUM = "/usr/bin/chromium"
# Flags that work headless as root in a container without a GPU or a
# session bus, and keep Chromium off the network but for the page.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = REPO / "target" / "dashboard.png"
WORKERS = 2
TASKS = 25


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing(why: str) -> None:
    if os.environ.get("ALLOT_BROWSER_TEST") == "required":
        pytest.fail(why + " (ALLOT_BROWSER_TEST=required)")
    pytest.skip(why)


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the Python package playwright is not installed (pip install playwright)")
    return sync_playwright


@pytest.fixture
def up(allot_bin: str):
    """A running `allot up --workers 2` with its dashboard on a free
    loopback port: (its --json line, its process); stopped at the end."""
    d = Path(tempfile.mkdtemp(prefix="allot-py-dash-"))
    os.chmod(d, 0o700)
    port = free_tcp_port()
    env = dict(os.environ, ALLOT_LOG="warn")
    for v in ("ALLOT_GATEWAY", "ALLOT_DISTRIBUTOR", "ALLOT_PKI", "ALLOT_NAME"):
        env.pop(v, None)
    p = subprocess.Popen(
        [allot_bin, "up", "--workers", str(WORKERS), "--listen", "127.0.0.1:0",
         "--metrics", f"127.0.0.1:{port}", "--dir", str(d), "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )
    try:
        line = p.stdout.readline()
        assert line, f"allot up printed nothing: {p.stderr.read().decode() if p.poll() is not None else ''}"
        info = json.loads(line)
        yield info, p
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        p.stdout.close()
        p.stderr.close()
        subprocess.run(["rm", "-rf", str(d)], check=False)


def _browser_ready():
    """Playwright's sync API, once Chromium and Playwright are known to be
    there."""
    if not os.path.exists(CHROMIUM):
        _missing(f"{CHROMIUM} is missing (apt-get install chromium)")
    return _playwright()


def test_the_dashboard_shows_the_workers_and_the_completed_count_rising(up, allot_bin):
    sync_playwright = _browser_ready()
    info, _ = up
    url = info["dashboard"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/"), info

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            errors, elsewhere = [], []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: None if r.url.startswith(url) else elsewhere.append(r.url))
            page.goto(url)

            # Every worker's name, in the workers table.
            for i in range(1, WORKERS + 1):
                page.wait_for_function(
                    "name => document.querySelector('#workers tbody').textContent.includes(name)",
                    arg=f"worker-{i}", timeout=30_000,
                )
            page.wait_for_selector("#stat-completed", timeout=30_000)
            before = int(page.get_attribute("#stat-completed", "data-value"))
            submitted = int(page.get_attribute("#stat-submitted", "data-value"))

            # Tasks through the gateway, with the variables `allot up` gave.
            env = dict(os.environ, ALLOT_LOG="warn", **info["env"])
            with tempfile.NamedTemporaryFile() as f:
                f.write(b"hello")
                f.flush()
                r = subprocess.run(
                    [allot_bin, "submit", "--app", "echo", "--array", f"1-{TASKS}", "--input", f.name],
                    env=env, capture_output=True, timeout=120,
                )
            assert r.returncode == 0, r.stderr.decode()

            page.wait_for_function(
                "want => Number(document.querySelector('#stat-completed').dataset.value) >= want",
                arg=before + TASKS, timeout=30_000,
            )
            shown = int(page.get_attribute("#stat-completed", "data-value"))
            assert shown == before + TASKS, (before, shown)
            assert page.text_content("#stat-completed").strip() == f"{shown:,}"
            # The job's tasks count as submitted too.
            page.wait_for_function(
                "want => Number(document.querySelector('#stat-submitted').dataset.value) >= want",
                arg=submitted + TASKS, timeout=10_000,
            )
            # The charts have drawn lines (samples come once a second).
            page.wait_for_function(
                "() => document.querySelectorAll('#chart-rate polyline').length > 0", timeout=30_000
            )
            page.wait_for_function(
                "() => document.querySelector('#live').className === 'ok'", timeout=10_000
            )
            time.sleep(1.5)  # one more poll, so the charts show the run
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            assert errors == [], errors
            assert elsewhere == [], f"the page fetched from elsewhere: {elsewhere}"
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000


def test_a_token_in_the_address_opens_a_guarded_dashboard(up, allot_bin):
    """A distributor with --metrics-token: the page at /?token=... loads
    and keeps updating (it sends the token on as a bearer token); without
    the token the browser gets 401."""
    sync_playwright = _browser_ready()
    info, _ = up
    d = Path(tempfile.mkdtemp(prefix="allot-py-dash-token-"))
    token = d / "token"
    token.write_text("dash+board/%token\n")
    port = free_tcp_port()
    env = dict(os.environ, ALLOT_LOG="warn")
    dist = subprocess.Popen(
        [allot_bin, "distributor", "--name", "distributor", "--listen", "127.0.0.1:0",
         "--pki", info["pki"], "--set-name", "guarded", "--data-dir", str(d / "data"),
         "--metrics", f"127.0.0.1:{port}", "--metrics-token", str(token)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/"
    try:
        def healthy():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return True
            except OSError:
                return False
        until = time.monotonic() + 30
        while not healthy():
            assert dist.poll() is None, "the distributor exited"
            assert time.monotonic() < until, "the distributor's metrics did not come up"
            time.sleep(0.1)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                assert page.goto(base).status == 401
                assert page.goto(base + "?token=dash%2Bboard%2F%25tok").status == 401
                assert page.goto(base + "?token=dash%2Bboard%2F%25token").status == 200
                # Two polls in a row answered: the API took the token too.
                page.wait_for_function(
                    "() => document.querySelector('#set-label').textContent.includes('guarded')",
                    timeout=30_000,
                )
                page.wait_for_function(
                    "() => document.querySelector('#live').className === 'ok'", timeout=10_000
                )
                assert page.text_content("#node") == "distributor"
            finally:
                browser.close()
    finally:
        dist.send_signal(signal.SIGTERM)
        try:
            dist.wait(timeout=30)
        except subprocess.TimeoutExpired:
            dist.kill()
            dist.wait(timeout=10)
        subprocess.run(["rm", "-rf", str(d)], check=False)
