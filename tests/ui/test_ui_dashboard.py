"""The dashboard in a real browser against a real local stack: sign in, read the pages, act.

Each test drives headless Chromium through /ui as a user would, and checks what the page
shows after the API and the worker did their part (no reload: the pages update live).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from forwarder_api.dashboard import CONTENT_SECURITY_POLICY
from playwright.sync_api import Page, Route, expect
from support.api_process import start_api
from support.dashboard import IMG_VALUE, SCRIPT_VALUE, Watched
from support.processes import forwarder_env, free_port
from support.stack import Stack

pytestmark = pytest.mark.ui


def test_security_headers_and_no_csp_violation(
    ui_stack: Stack, signed_in: Page, watched: Watched
) -> None:
    for path in ("/ui/", "/ui/app.js", "/ui/style.css", "/ui/missing.js"):
        answer = httpx.get(f"{ui_stack.api_url}{path}")
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
    assert (
        httpx.get(f"{ui_stack.api_url}/ui/app.js")
        .headers["content-type"]
        .startswith("text/javascript")
    )
    redirect = httpx.get(f"{ui_stack.api_url}/ui")
    assert redirect.status_code == 308
    assert redirect.headers["location"] == "/ui/"
    # Every page, with data on it, loads and renders without one console error.
    signed_in.locator("a", has_text="ui-ping").first.click()
    expect(signed_in.locator("#preview")).to_be_visible()
    assert watched.console_errors == []


def test_sign_in_refuses_a_wrong_token_with_the_apis_message(page: Page) -> None:
    page.goto("/ui/")
    page.get_by_label("API token").fill("not-the-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#sign-in-error")).to_have_text("401: invalid bearer token")
    assert page.evaluate("sessionStorage.length") == 0
    expect(page.locator("#schedules")).to_have_count(0)


def test_an_api_without_tokens_is_refused_as_the_api_refuses_it(
    ui_stack: Stack, page: Page, tmp_path: Path
) -> None:
    # A second API on the same Redis with no token configured: every protected route is 401.
    port = free_port()
    env = forwarder_env(
        ui_stack.redis_url,
        FORWARDER_SCHEDULES_MODE="local",
        FORWARDER_SCHEDULES_DIR=str(ui_stack.schedules_dir),
    )
    api = start_api(env, tmp_path / "api.log", port, "tokenless-api")
    try:
        page.goto(f"http://127.0.0.1:{port}/ui/")
        page.get_by_label("API token").fill("anything")
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("#sign-in-error")).to_have_text(
            re.compile("401: no API tokens are configured on the server")
        )
    finally:
        api.stop()


def test_schedules_then_run_now_and_watch_it_succeed(signed_in: Page) -> None:
    page = signed_in
    rows = page.locator("#schedules tbody tr")
    # The repo's samples are listed, with their schedule in words.
    sample = rows.filter(has_text="ping-every-10s")
    expect(sample).to_have_count(1)
    expect(sample).to_contain_text("every 10s")
    expect(rows.filter(has_text="ui-suspend")).to_contain_text("team-a/")
    # The filters: by namespace, then by text.
    page.locator("#filter-namespace").select_option("team-a")
    expect(rows).to_have_count(1)
    page.locator("#filter-namespace").select_option("")
    page.locator("#filter-text").fill("ui-ping")
    expect(rows).to_have_count(1)

    rows.first.get_by_role("link", name=re.compile("ui-ping")).click()
    expect(page.locator(".page-head h1")).to_have_text("default/ui-ping")
    expect(page.locator("#preview tbody tr")).to_have_count(10)
    page.get_by_text("with kwargs").click()
    page.locator("#run-kwargs").fill('{"who": "the dashboard"}')
    page.get_by_role("button", name="Run now").click()
    sent = page.locator(".message.info a")
    expect(sent).to_be_visible()
    run_id = sent.inner_text()
    # The run appears on the timeline and succeeds there, without a reload.
    row = page.locator(f'#timeline tr[data-run="{run_id}"]')
    expect(row.locator(".badge")).to_have_text("SUCCESS", timeout=30_000)
    expect(page.locator('[data-count="succeededRunCount"] .tile-value')).not_to_have_text("0")

    sent.click()
    expect(page.locator("#run-id")).to_have_text(run_id)
    expect(page.locator("#result")).to_contain_text('"who": "the dashboard"')
    expect(page.locator("#run-source")).to_contain_text("trigger — run now")
    expect(page.locator("#run-worker")).to_contain_text("worker")


def test_suspend_and_resume(signed_in: Page, api_client: httpx.Client) -> None:
    page = signed_in
    page.goto("/ui/#/schedules/team-a/ui-suspend")
    page.get_by_role("button", name="Suspend").click()
    expect(page.locator(".message.info")).to_contain_text("team-a/ui-suspend suspended")
    expect(page.locator(".page-head .badge.suspended")).to_be_visible()
    assert api_client.get("/schedules/team-a/ui-suspend").json()["spec"]["suspend"] is True

    page.get_by_role("button", name="Resume").click()
    expect(page.locator(".message.info")).to_contain_text("team-a/ui-suspend resumed")
    expect(page.locator(".page-head .badge.suspended")).to_have_count(0)
    assert api_client.get("/schedules/team-a/ui-suspend").json()["spec"]["suspend"] is False


def test_resume_after_failures(signed_in: Page, api_client: httpx.Client) -> None:
    # ui-fragile fails every 3 s and is suspended after two failures in a row.
    page = signed_in
    page.goto("/ui/#/schedules/default/ui-fragile")
    badge = page.locator(".page-head .badge.suspended")
    expect(badge).to_have_text("suspended after failures", timeout=30_000)
    expect(page.locator('[data-count="consecutiveFailures"]')).to_have_class(re.compile("bad"))
    # Counted while it is suspended: once resumed, its overdue slot may fire within
    # milliseconds, before the page shows the resume.
    runs = len(api_client.get("/runs", params={"schedule": "default/ui-fragile"}).json()["items"])
    page.get_by_role("button", name="Resume").click()
    expect(page.locator(".message.info")).to_contain_text("default/ui-fragile resumed")
    # It fires again, fails twice more, and the page shows it suspended again by itself.
    expect(badge).to_have_count(0)
    expect(badge).to_have_text("suspended after failures", timeout=30_000)
    again = api_client.get("/runs", params={"schedule": "default/ui-fragile"}).json()["items"]
    assert len(again) >= runs + 2


def test_backfill_a_window_and_see_its_runs(signed_in: Page) -> None:
    # ui-escape fires daily at 06:00 UTC: a window of the last three days holds two or three.
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    page = signed_in
    page.goto("/ui/#/schedules/default/ui-escape")
    page.locator("summary", has_text="Backfill").click()
    page.locator("#backfill-start").fill(f"{(hour - timedelta(days=3)):%Y-%m-%dT%H:%M:%SZ}")
    page.locator("#backfill-end").fill(f"{hour:%Y-%m-%dT%H:%M:%SZ}")
    page.get_by_role("button", name="Backfill window").click()
    expect(page.locator(".message.info")).to_contain_text(re.compile(r"Backfill .*: [23] slots"))
    backfilled = page.locator("#timeline tr", has_text="backfill")
    expect(backfilled.first.locator(".badge")).to_have_text("SUCCESS", timeout=30_000)


def test_an_api_error_is_shown_not_swallowed(signed_in: Page) -> None:
    page = signed_in
    page.goto("/ui/#/schedules/default/ui-ping")
    page.locator("summary", has_text="Backfill").click()
    page.locator("#backfill-start").fill("2099-01-01T00:00:00Z")
    page.locator("#backfill-end").fill("2099-01-02T00:00:00Z")
    page.get_by_role("button", name="Backfill window").click()
    expect(page.locator(".message.error")).to_contain_text("422")
    expect(page.locator(".message.error")).to_contain_text("future")


def test_a_failed_run_shows_its_traceback(
    signed_in: Page, run_now: Callable[[str], dict[str, Any]]
) -> None:
    failed = run_now("default/ui-fail")
    assert failed["state"] == "FAILURE"
    page = signed_in
    page.goto(f"/ui/#/runs/{failed['id']}")
    expect(page.locator(".page-head .badge")).to_have_text("FAILURE")
    expect(page.locator("#run-error")).to_have_text("ValueError: the database said no")
    expect(page.locator("#traceback")).to_contain_text("Traceback (most recent call last)")
    expect(page.locator("#traceback")).to_contain_text("raise ValueError(message)")


def test_markup_in_results_and_specs_is_text(
    signed_in: Page, run_now: Callable[[str], dict[str, Any]], watched: Watched
) -> None:
    done = run_now("default/ui-escape")
    assert done["result"]["args"] == [SCRIPT_VALUE, IMG_VALUE]
    page = signed_in
    page.goto("/ui/#/schedules/default/ui-escape")
    expect(page.locator("#timeline .badge").first).to_have_text("SUCCESS")
    # The spec's args, as text.
    expect(page.get_by_text(SCRIPT_VALUE, exact=False).first).to_be_visible()
    page.goto(f"/ui/#/runs/{done['id']}")
    result = page.locator("#result")
    # As JSON text: the img value's quotes are escaped the way JSON writes them.
    expect(result).to_contain_text(SCRIPT_VALUE)
    expect(result).to_contain_text(json.dumps(IMG_VALUE))
    expect(page.locator("#args")).to_contain_text(json.dumps(IMG_VALUE))
    # Nothing was parsed as markup, so nothing ran.
    assert page.locator("#view script, #view img").count() == 0
    assert page.evaluate("window.__pwned") is None
    assert watched.dialogs == []
    assert watched.console_errors == []


def test_revoke_a_running_run_and_see_it_end(signed_in: Page, api_client: httpx.Client) -> None:
    run_id = api_client.post("/schedules/default/ui-sleep/trigger").json()["id"]
    page = signed_in

    # As if the page were opened before the worker took the run: its first read says PENDING.
    # The start shows within seconds all the same (a long poll would answer only at the end).
    def queued(route: Route) -> None:
        route.fulfill(json={**route.fetch().json(), "state": "PENDING", "started_at": None})

    page.route(re.compile(rf"/runs/{run_id}\?wait=0$"), queued)
    page.goto(f"/ui/#/runs/{run_id}")
    expect(page.locator(".page-head .badge")).to_have_text("STARTED", timeout=10_000)
    page.get_by_label("also stop it if running").check()
    page.get_by_role("button", name="Revoke").click()
    expect(page.locator(".message.info")).to_contain_text("Revoke sent (terminating")
    # The long poll brings the end in; the button goes with it.
    expect(page.locator(".page-head .badge")).to_have_text("REVOKED", timeout=20_000)
    expect(page.get_by_role("button", name="Revoke")).to_have_count(0)


HIDE = """() => {
  Object.defineProperty(document, "hidden", { configurable: true, get: () => %s });
  document.dispatchEvent(new Event("visibilitychange"));
}"""


def test_lists_poll_only_while_the_tab_is_visible(signed_in: Page) -> None:
    page = signed_in
    reads: list[str] = []
    page.on("request", lambda r: reads.append(r.url) if r.url.endswith("/schedules") else None)
    page.evaluate(HIDE % "true")
    reads.clear()
    # Longer than the list's 5 s interval: a visible tab would have read it again.
    page.wait_for_timeout(6_500)
    assert reads == []
    with page.expect_request(lambda r: r.url.endswith("/schedules"), timeout=3_000):
        page.evaluate(HIDE % "false")
