"""The README's screenshots of the dashboard (docs/images/ui-*.png), from a live stack.

Opt-in: a normal run skips this, so `make test` never rewrites the images. Make them with
``FORWARDER_UI_SCREENSHOTS=1 .venv/bin/pytest tests/ui -k screenshots``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect
from support.processes import REPO, eventually

pytestmark = [
    pytest.mark.ui,
    pytest.mark.skipif(
        os.environ.get("FORWARDER_UI_SCREENSHOTS") != "1",
        reason="rewrites docs/images: set FORWARDER_UI_SCREENSHOTS=1",
    ),
]

IMAGES = REPO / "docs" / "images"


def test_screenshots(
    signed_in: Page, api_client: httpx.Client, run_now: Callable[[str], dict[str, Any]]
) -> None:
    # Some history: the every-10s sample's own runs, runs now, a failure, and a backfill.
    for _ in range(2):
        run_now("default/ui-ping")
    failed = run_now("default/ui-fail")
    run_now("default/ui-fail")
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    window = {
        "start": (hour - timedelta(hours=5)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "end": hour.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    answer = api_client.post("/schedules/default/hourly-rollup/backfill", json=window)
    assert answer.status_code == 202, answer.text
    api_client.post("/schedules/default/ping-every-10s/trigger", json={"kwargs": {"manual": True}})
    eventually(
        lambda: (
            len(
                api_client.get("/runs", params={"schedule": "default/ping-every-10s"}).json()[
                    "items"
                ]
            )
            >= 4
        ),
        60,
        0.5,
        "a few runs of the every-10s sample",
    )

    page = signed_in
    page.set_viewport_size({"width": 1400, "height": 820})
    expect(
        page.locator('#schedules tr[data-schedule="default/ping-every-10s"] .mark').first
    ).to_be_visible()
    page.screenshot(path=IMAGES / "ui-schedules.png", full_page=True)

    page.goto("/ui/#/schedules/default/ping-every-10s")
    # A time line with some history on it (the sample fires every 10 s).
    expect(page.locator("#timeline tbody tr")).to_have_count(8, timeout=90_000)
    page.screenshot(path=IMAGES / "ui-schedule.png")

    page.goto(f"/ui/#/runs/{failed['id']}")
    expect(page.locator("#traceback")).to_be_visible()
    page.screenshot(path=IMAGES / "ui-run.png")
