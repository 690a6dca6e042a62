"""The dashboard's browser tests: a real local stack and headless Chromium driving /ui.

The stack is support.stack's (embedded Redis, worker, beat, Flower, the folder source, the
API), with tracebacks shown, its folder holding the repo's samples (but the http one, whose
target is `make up`'s API) and the schedules these tests act on. The browser is Debian's
chromium through Playwright, which cannot download its own here.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from support.dashboard import SCHEDULES, Watched, opened_page, sign_in
from support.processes import REPO, eventually
from support.stack import TOKEN, Stack, running_stack

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="session")
def ui_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("ui-stack")
    folder = base / "schedules"
    folder.mkdir()
    for sample in sorted((REPO / "manifests" / "samples").glob("*.yaml")):
        if sample.name != "http-forward.yaml":
            shutil.copy(sample, folder / sample.name)
    for name, text in SCHEDULES.items():
        (folder / name).write_text(text.lstrip())
    with running_stack(base, FORWARDER_API_SHOW_TRACEBACK="true") as stack:
        with stack.client() as client:
            # Loaded into the scheduler: the folder source has applied every file.
            eventually(lambda: _loaded(client), 60, 0.2, "the dashboard tests' schedules loaded")
        yield stack


def _loaded(client: httpx.Client) -> bool:
    for key in [f"default/{n}" for n in ("ui-ping", "ui-fail", "ui-sleep", "ui-escape")] + [
        "team-a/ui-suspend"
    ]:
        answer = client.get(f"/schedules/{key}")
        if answer.status_code != 200 or not (answer.json().get("status") or {}).get("nextRunTime"):
            return False
    return True


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Per module, not per session: while Playwright's sync API is running, the main thread has
    # an event loop, and the asyncio tests of later modules could not start theirs.
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        yield launched
        launched.close()


@pytest.fixture
def watched() -> Watched:
    return Watched()


@pytest.fixture
def page(browser: Browser, ui_stack: Stack, watched: Watched) -> Iterator[Page]:
    with opened_page(browser, ui_stack.api_url, watched) as opened:
        yield opened


@pytest.fixture
def signed_in(page: Page) -> Page:
    """The dashboard, signed in with the stack's token, on the schedules page."""
    return sign_in(page, TOKEN)


@pytest.fixture
def api_client(ui_stack: Stack) -> Iterator[httpx.Client]:
    with ui_stack.client() as client:
        yield client


@pytest.fixture
def run_now(api_client: httpx.Client) -> Callable[[str], dict[str, Any]]:
    """Run a schedule now through the API and wait for its end: data for a page to show."""

    def run(key: str) -> dict[str, Any]:
        run_id = api_client.post(f"/schedules/{key}/trigger").json()["id"]
        answer: dict[str, Any] = api_client.get(f"/runs/{run_id}", params={"wait": 30}).json()
        assert answer["state"] in {"SUCCESS", "FAILURE"}, answer
        return answer

    return run
