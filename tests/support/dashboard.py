"""What the dashboard's browser tests (and its screenshots) put on a stack and watch for.

The schedules they act on, written into the stack's folder, and the markup values a page
must show as text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

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
