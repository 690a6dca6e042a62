"""``forwarder preview FILE -n N``: a YAML file validated offline (no Redis: the URL given
points nowhere) and its next fire times printed in the schedule's zone and in UTC, the slots
a DST change moved marked; a bad file is one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

NOWHERE = {"FORWARDER_REDIS_URL": "redis://127.0.0.1:1/0"}


def forwarder(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **NOWHERE}
    return subprocess.run(
        [sys.executable, "-m", "forwarder_worker.local.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def write(path: Path, name: str, spec: dict[str, Any]) -> Path:
    document = {
        "apiVersion": "forwarder.dev/v1alpha1",
        "kind": "ScheduledTask",
        "metadata": {"name": name, "namespace": "ops"},
        "spec": spec,
    }
    path.write_text(yaml.safe_dump(document))
    return path


def test_preview_prints_local_and_utc_times_and_marks_dst(tmp_path: Path) -> None:
    spec = {
        "task": "forwarder.ping",
        "schedule": {"cron": "30 2 * * *"},
        "timeZone": "America/New_York",
        "startTime": "2031-03-08T00:00:00-05:00",  # the day before New York springs forward
        "maxRuns": 4,
        "exclusions": {"dates": ["2031-03-10"]},
    }
    done = forwarder("preview", str(write(tmp_path / "nightly.yaml", "nightly", spec)), "-n", "6")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "ops/nightly: cron 30 2 * * * in America/New_York, next 4:"
    rows = [line.split(None, 2) for line in lines[2:]]
    assert [(r[0], r[1]) for r in rows] == [
        ("2031-03-08T02:30:00-05:00", "2031-03-08T07:30:00Z"),
        ("2031-03-09T03:30:00-04:00", "2031-03-09T07:30:00Z"),  # 02:30 does not exist
        ("2031-03-11T02:30:00-04:00", "2031-03-11T06:30:00Z"),  # the 10th is excluded
        ("2031-03-12T02:30:00-04:00", "2031-03-12T06:30:00Z"),
    ]
    assert rows[1][2].strip() == "shifted +1h: 02:30 does not exist on 2031-03-09"
    assert [r[2].strip() for r in (rows[0], rows[2], rows[3])] == ["-", "-", "-"]


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        (
            {"startTime": "2031-01-02T00:00:00Z", "endTime": "2031-01-01T00:00:00Z"},
            "ops/bad: spec.endTime: 2031-01-01T00:00:00+00:00 is not after startTime "
            "2031-01-02T00:00:00+00:00",
        ),
        ({"maxRuns": -3}, "ops/bad: spec.maxRuns: Input should be greater than or equal to 1"),
        (
            {"exclusions": {"cron": ["0 25 * * *"]}},
            "ops/bad: spec.exclusions.cron[0]: '0 25 * * *' is not a valid cron expression",
        ),
    ],
)
def test_a_bad_spec_is_one_line_and_a_nonzero_exit(
    tmp_path: Path, spec: dict[str, Any], says: str
) -> None:
    path = write(tmp_path / "bad.yaml", "bad", {"task": "t", "schedule": {"every": "1m"}, **spec})
    done = forwarder("preview", str(path))
    assert done.returncode == 1
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"forwarder preview: {path}: ")
    assert line.endswith(says)


def test_a_file_that_is_not_a_schedule_is_one_line_and_a_nonzero_exit(tmp_path: Path) -> None:
    missing = forwarder("preview", str(tmp_path / "missing.yaml"))
    assert missing.returncode == 1
    assert len(missing.stderr.splitlines()) == 1
    other = tmp_path / "other.yaml"
    other.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    done = forwarder("preview", str(other))
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"forwarder preview: {other}: document is v1/ConfigMap, not forwarder.dev/v1alpha1/"
        "ScheduledTask"
    ]
    assert forwarder("preview", str(other), "-n", "0").returncode == 2  # argparse's usage error
