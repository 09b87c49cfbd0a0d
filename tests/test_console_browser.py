"""The web console in a real browser: Playwright for Python driving Debian's chromium against
a real ``hatz-worker serve``, a real Celery worker, the fake Hatz server and a callback
receiver, all on loopback.

The tests run in file order and share one logged-in browser page. With
``CONSOLE_SCREENSHOTS=docs/console`` they also write the documentation's
screenshots there (otherwise into a temporary folder).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright import sync_api as playwright_api

from tests.conftest import API_KEY
from tests.http_stack import ApiServer, running_api
from tests.stack import Stack, running_stack
from worker.api.batches import enqueue_batch
from worker.fake_hatz import FakeInput, FakeStep
from worker.local.stack import wait_until
from worker.store.poll_log import POLL_LOG_SIZE

pytestmark = pytest.mark.integration


CHROMIUM = "/usr/bin/chromium"
LAUNCH_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
WORKER_SETTINGS: dict[str, Any] = {
    "poll_initial_delay": 0.1,
    "poll_interval": 0.2,
    "poll_max_interval": 0.4,
    "poll_backoff": 1.0,
    "http_retries": 1,
    "http_retry_base_delay": 0.05,
    "http_retry_max_delay": 0.2,
    "app_cache_ttl": 0,
    "webhook_secret": SECRET,
    "callback_allow_private": True,
    "callback_retry_delays": "0,0.2",
}
ROOT = Path(__file__).resolve().parents[1]


def ensure_chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (as root), else a clear failure."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-q"], check=False, env=env, timeout=300)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "chromium"], check=False, env=env, timeout=600
        )
    if not Path(CHROMIUM).exists():
        pytest.fail(
            "the console's browser test needs Debian's chromium at /usr/bin/chromium: "
            "run `sudo apt-get install chromium` (never `playwright install`)"
        )
    return CHROMIUM


class Console:
    """The running stack, the API process, tokens, and a logged-in browser page."""

    def __init__(self, stack: Stack, api: ApiServer, page: Any, shots: Path) -> None:
        self.stack = stack
        self.api = api
        self.page = page
        self.shots = shots
        self.admin = api.token("ops", admin=True)
        self.client = api.token("app")

    def url(self, path: str) -> str:
        """An absolute console URL."""
        return self.api.url + path

    def shot(self, name: str, *, full: bool = False) -> None:
        """A screenshot of the page as it is (the viewport unless ``full``: small files)."""
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=full)

    def post_run(self, body: dict[str, Any]) -> str:
        """A run created through the HTTP API by a (non-admin) client; its id."""
        answer = self.api.request("POST", "/v1/runs", token=self.client, json=body)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["run_id"])

    def no_secret_in_page(self) -> None:
        """Neither the API key, the webhook secret nor a presigned signature is in the source."""
        html = self.page.content()
        for secret in (API_KEY, SECRET, self.admin, "X-Amz-Signature", "Signature="):
            assert secret not in html


@pytest.fixture(scope="module")
def console() -> Iterator[Console]:
    """One stack, one API process, one browser for the module."""
    executable = ensure_chromium()
    target = os.environ.get("CONSOLE_SCREENSHOTS")
    with tempfile.TemporaryDirectory(prefix="hatz-console-shots-") as scratch:
        shots = (ROOT / target) if target else Path(scratch)
        shots.mkdir(parents=True, exist_ok=True)
        with running_stack(values=WORKER_SETTINGS) as stack:
            settings = {**stack.values, "client_rate_burst": 1000, "console_sample_interval": 1}
            with running_api(settings) as api, playwright_api.sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=executable, args=LAUNCH_FLAGS)
                try:
                    context = browser.new_context(viewport={"width": 1200, "height": 760})
                    context.set_default_timeout(20_000)
                    yield Console(stack, api, context.new_page(), shots)
                finally:
                    browser.close()


def test_a_non_admin_token_is_refused(console: Console) -> None:
    page = console.page
    page.goto(console.url("/console/runs"))
    assert page.url.endswith("/console/login")  # no session: to the login page

    page.get_by_label("Admin token").fill(console.client)
    with page.expect_response(console.url("/console/login")) as answer:
        page.get_by_role("button", name="Log in").click()

    assert answer.value.status == 403
    assert "not an admin" in page.get_by_role("alert").inner_text()
    assert not page.context.cookies()
    page.get_by_label("Admin token").fill("hw_not-a-token")
    page.get_by_role("button", name="Log in").click()
    assert "not valid" in page.get_by_role("alert").inner_text()
    console.shot("console-login")


def test_log_in_and_watch_a_run_reach_completed_without_reloading(console: Console) -> None:
    page = console.page
    page.goto(console.url("/console/login"))
    # Focused, for the keyboard. Chromium applies autofocus at a rendering update that
    # may come after goto() returns (on the load event): wait for it, with a deadline.
    page.wait_for_function("document.activeElement && document.activeElement.id === 'token'")
    assert page.evaluate("document.activeElement.id") == "token"
    page.keyboard.type(console.admin)
    page.keyboard.press("Enter")
    page.wait_for_url("**/console/runs")
    cookie = page.context.cookies()[0]
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    page.evaluate("window.notReloaded = true")

    app = console.stack.app(
        duration=4.0, steps=[FakeStep(output_type="dump"), FakeStep(output_type="document")]
    )
    run_id = console.post_run(
        {"app_id": app.id, "metadata": {"order": 42}, "callback_url": console.stack.receiver.url}
    )

    badge = page.locator(f'tr[data-run="{run_id}"] .badge')
    badge.wait_for()  # the row appears in place (the table refreshes every 2 s)...
    assert badge.inner_text() != "COMPLETED"  # ...while the 4 s job still runs
    badge.filter(has_text="COMPLETED").wait_for(timeout=30_000)
    assert page.evaluate("window.notReloaded") is True
    assert int(page.locator('.n[data-state="COMPLETED"]').inner_text()) >= 1
    console.no_secret_in_page()
    console.shot("console-runs")
    console.stack.run_for_timeline = run_id  # type: ignore[attr-defined]


def test_a_runs_timeline(console: Console) -> None:
    page = console.page
    run_id = console.stack.run_for_timeline  # type: ignore[attr-defined]
    delivered = lambda: console.stack.callback_state(run_id) == "delivered"  # noqa: E731
    wait_until(delivered, timeout=20, interval=0.05)
    page.get_by_role("link", name=run_id).click()
    page.wait_for_url(f"**/console/runs/{run_id}")

    timeline = page.get_by_label("Timeline")
    text = timeline.inner_text()
    for expected in ("QUEUED", "SUBMITTED", ": running", ": complete", "COMPLETED", "document"):
        assert expected in text
    assert "callback workflow_run.completed: HTTP 200" in text
    polls = page.locator("li.ev-poll")
    assert 2 <= polls.count() <= POLL_LOG_SIZE  # the record keeps the last 20
    assert "s late" in text
    assert "expires" in text
    assert "42" in page.locator("#metadata").inner_text()  # the metadata
    assert page.get_by_role("button", name="Cancel run").count() == 0
    console.no_secret_in_page()
    console.shot("console-run", full=True)


def test_replay_a_dead_letter_and_the_receiver_gets_it(console: Console) -> None:
    stack, page = console.stack, console.page
    stack.receiver.failing = True
    app = stack.app(duration=0.2)
    run_id = console.post_run({"app_id": app.id, "callback_url": stack.receiver.url})
    wait_until(lambda: stack.callback_state(run_id) == "failed", timeout=30, interval=0.05)
    stack.receiver.failing = False
    assert not stack.deliveries_for(run_id)

    page.get_by_role("link", name="Dead letters").click()
    row = page.locator(f'tr[data-letter="{run_id}"]')
    assert "HTTP 503" in row.inner_text() or "503" in row.inner_text()
    console.shot("console-dead-letters")
    page.get_by_role("button", name=f"Replay run {run_id}").click()

    assert "replay queued" in page.get_by_role("status").inner_text()
    outcome = page.locator(f'tr[data-replay="{run_id}"]')
    outcome.locator(".badge", has_text="delivered").wait_for()  # shown live, no reload
    assert "HTTP 200" in outcome.inner_text()
    assert stack.deliveries_for(run_id)  # the receiver got it
    assert stack.callback_state(run_id) == "delivered"
    console.shot("console-replayed")
    page.reload()
    assert page.locator(f'tr[data-letter="{run_id}"]').count() == 0


def test_cancel_a_running_run(console: Console) -> None:
    page = console.page
    app = console.stack.app(duration=60)
    run_id = console.post_run({"app_id": app.id})
    page.goto(console.url(f"/console/runs/{run_id}"))
    page.locator("#run-state", has_text="RUNNING").wait_for()

    page.get_by_role("button", name="Cancel run").click()

    page.wait_for_url(f"**/console/runs/{run_id}?done=canceled")
    assert page.locator("#run-state").inner_text() == "CANCELED"
    assert console.stack.context.ledger.require(run_id).state.value == "CANCELED"


def test_an_action_without_the_csrf_token_is_refused(console: Console) -> None:
    app = console.stack.app(duration=60)
    run_id = console.post_run({"app_id": app.id})
    cookies = {c["name"]: c["value"] for c in console.page.context.cookies()}
    origin = {"Origin": console.api.url}
    with requests.Session() as http:
        http.trust_env = False
        url = console.url(f"/console/runs/{run_id}/cancel")
        bare = http.post(url, cookies=cookies, headers=origin, data={}, timeout=10)
        forged = http.post(url, cookies=cookies, headers=origin, data={"csrf": "x"}, timeout=10)
        elsewhere = http.post(
            url, cookies=cookies, headers={"Origin": "http://evil.test"}, data={}, timeout=10
        )
    assert [bare.status_code, forged.status_code, elsewhere.status_code] == [403, 403, 403]
    assert console.stack.context.ledger.require(run_id).state.value != "CANCELED"
    page_answer = console.page.request.get(console.url("/console/runs"))
    assert "script-src 'self'" in page_answer.headers["content-security-policy"]
    assert page_answer.headers["x-frame-options"] == "DENY"
    script = console.page.request.get(console.url("/console/static/console.js"))
    assert "content-security-policy" in script.headers
    assert "content-security-policy" not in console.api.request("GET", "/healthz").headers
    root = console.api.request("GET", "/", allow_redirects=False)
    assert (root.status_code, root.headers["location"]) == (303, "/console/runs")
    console.api.request("POST", f"/v1/runs/{run_id}/cancel", token=console.admin)


def test_batches_and_system_pages(console: Console, tmp_path: Path) -> None:
    stack, page = console.stack, console.page
    app = stack.app(duration=0.2, user_inputs=[FakeInput("topic", required=True)])
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"topic": f"t{i}"}) + "\n" for i in range(3)))
    batch_id = enqueue_batch(app.id, rows, context=stack.context, celery=stack.celery)

    page.get_by_role("link", name="Batches").click()
    assert page.get_by_label(f"batch {batch_id} progress").is_visible()
    console.shot("console-batches")
    page.get_by_role("link", name=batch_id).click()
    wait_until(
        lambda: page.reload() is not None and "3 of 3 rows done" in page.inner_text("main"),
        timeout=30,
        interval=0.3,
    )
    assert page.locator("tbody tr").count() == 3
    download = page.request.get(console.url(f"/console/batches/{batch_id}/results.csv"))
    assert download.ok
    assert download.text().count("COMPLETED") == 3
    console.shot("console-batch")

    page.get_by_role("link", name="System").click()
    assert page.get_by_role("heading", name="Credit-overage breaker").is_visible()
    page.locator("svg.chart").first.wait_for()  # samples of the counters, one a second here
    assert "hatz.poll" in page.inner_text("main")
    console.no_secret_in_page()
    console.shot("console-system")


def test_log_out(console: Console) -> None:
    page = console.page
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/console/login")
    page.goto(console.url("/console/runs"))
    assert page.url.endswith("/console/login")
