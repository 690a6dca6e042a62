"""What the dashboard's browser tests (and its screenshots) put on a stack and watch for.

The schedules they act on, written into the stack's folder, and the markup values a page
must show as text; and how a test opens a page on an API (watched for console errors and
dialogs) and signs in, whichever stack serves it (local, or the api in cluster mode).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from playwright.sync_api import Browser, ConsoleMessage, Dialog, Page, expect

# Values a page must show as text; each sets a flag on window if it ever ran as markup.
SCRIPT_VALUE = "<script>window.__pwned = 'script'</script>"
IMG_VALUE = "<img src=x onerror=\"window.__pwned = 'img'\">"

SCHEDULES = {
    "ui-ping.yaml": """
apiVersion: forwarder.dev/v1alpha1
kind: ScheduledTask
metadata: {name: ui-ping}
spec:
  task: forwarder.ping
  kwargs: {note: "from the dashboard tests"}
  schedule: {cron: "0 4 * * *"}
  timeZone: Europe/Helsinki
""",
    "ui-fail.yaml": """
apiVersion: forwarder.dev/v1alpha1
kind: ScheduledTask
metadata: {name: ui-fail}
spec:
  task: tests.fail
  kwargs: {message: "the database said no"}
  schedule: {cron: "0 5 * * *"}
""",
    "team-a.ui-suspend.yaml": """
apiVersion: forwarder.dev/v1alpha1
kind: ScheduledTask
metadata: {name: ui-suspend, namespace: team-a}
spec:
  task: forwarder.ping
  schedule: {every: 1h}
""",
    "ui-sleep.yaml": """
apiVersion: forwarder.dev/v1alpha1
kind: ScheduledTask
metadata: {name: ui-sleep}
spec:
  task: tests.sleep
  kwargs: {seconds: 30}
  schedule: {cron: "0 7 * * *"}
""",
    "ui-fragile.yaml": """
apiVersion: forwarder.dev/v1alpha1
kind: ScheduledTask
metadata: {name: ui-fragile}
spec:
  task: tests.fail
  kwargs: {message: "the upstream is down"}
  schedule: {every: 3s}
  suspendAfterFailures: 2
""",
    "ui-escape.yaml": f"""
apiVersion: forwarder.dev/v1alpha1
kind: ScheduledTask
metadata: {{name: ui-escape}}
spec:
  task: forwarder.ping
  args: {json.dumps([SCRIPT_VALUE, IMG_VALUE])}
  schedule: {{cron: "0 6 * * *"}}
""",
}


@dataclass
class Watched:
    """What a page said while a test drove it: console errors (CSP violations among them)
    and dialogs (an alert would mean injected script ran)."""

    console_errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@contextmanager
def opened_page(browser: Browser, base_url: str, watched: Watched) -> Iterator[Page]:
    """A page in a fresh browser context on the API at ``base_url``, its console errors
    (CSP violations among them) and dialogs kept in ``watched``; closed on exit."""
    context = browser.new_context(base_url=base_url, viewport={"width": 1400, "height": 900})
    page = context.new_page()

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            watched.console_errors.append(message.text)

    def on_dialog(dialog: Dialog) -> None:
        watched.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.console_errors.append(str(error)))
    page.on("dialog", on_dialog)
    page.set_default_timeout(15_000)
    try:
        yield page
    finally:
        context.close()


def sign_in(page: Page, token: str) -> Page:
    """Sign in to the dashboard with ``token``; the page is then on the schedules list."""
    page.goto("/ui/")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#schedules")).to_be_visible()
    return page
