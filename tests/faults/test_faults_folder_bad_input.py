"""The local folder source under bad input: each bad file is reported, none stops the source.

Bad files: malformed YAML, a wrong kind, a list instead of a mapping, the same name declared in
two files, a file over the size limit, binary junk, an invalid spec, an unknown task, and
hostile YAML: an aliases bomb ("billion laughs"), nesting past PyYAML's recursion, kwargs one
level too deep, a 5000-digit integer and ``.inf``. (A document of more than ``MAX_VALUES``
values written out one by one is refused the same way as the bomb, but takes PyYAML's pure
Python loader seconds to read: ``tests/worker/test_values.py`` covers that bound.) The
good schedules next to them are applied, a file added afterwards is applied, a bad file that
is fixed is applied, and a good file that breaks keeps its schedule. Checked both on
``FolderSource.sync`` (exact messages) and on the real ``python -m forwarder_operator.folder``
process (it keeps running and keeps reconciling).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from forwarder_operator.folder import FolderSource
from forwarder_worker import Core
from forwarder_worker.schedules.files import MAX_FILE_BYTES
from forwarder_worker.values import MAX_DEPTH, MAX_VALUES
from support.hostile_yaml import deep_kwargs, laughs_kwargs
from support.processes import BIN, eventually, forwarder_env, running, start

GOOD = """\
apiVersion: forwarder.dev/v1alpha1
kind: ScheduledTask
metadata:
  name: {name}
spec:
  task: forwarder.ping
  schedule:
    every: {every}
"""


def _with_kwargs(name: str, kwargs: str) -> bytes:
    return (GOOD.format(name=name, every="1s") + f"  kwargs:\n{kwargs}").encode()


BAD_FILES: dict[str, bytes] = {
    "malformed.yaml": b"apiVersion: forwarder.dev/v1alpha1\nkind: [unclosed\n  spec: {\n",
    "wrong-kind.yaml": b"apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm}\ndata: {}\n",
    "a-list.yaml": b"- just\n- a\n- list\n",
    "dup-b.yaml": GOOD.format(name="twin", every="2s").encode(),
    "huge.yaml": GOOD.format(name="huge", every="1s").encode()
    + b"# "
    + b"x" * (MAX_FILE_BYTES + 10)
    + b"\n",
    "junk.yaml": b"\xff\xfe\x00\x81" + os.urandom(4096),
    "bad-cron.yaml": GOOD.replace("every: {every}", "cron: '61 * * * *'")
    .format(name="bad-cron")
    .encode(),
    "unknown-task.yaml": GOOD.replace("forwarder.ping", "nobody.has.this")
    .format(name="unknown-task", every="1s")
    .encode(),
    # Hostile YAML (docs/reliability.md, "Hostile input"): each refused before any of it is
    # written out as JSON or validated.
    "laughs.yaml": _with_kwargs("laughs", laughs_kwargs()),
    "deep-yaml.yaml": _with_kwargs("deep-yaml", deep_kwargs(1000)),
    "deep-kwargs.yaml": _with_kwargs("deep-kwargs", deep_kwargs(MAX_DEPTH + 1)),
    "huge-int.yaml": _with_kwargs("huge-int", f"    a: {'9' * 5000}\n"),
    "infinity.yaml": _with_kwargs("infinity", "    a: .inf\n"),
}

# What each bad file's report must say.
REPORTS = {
    "malformed.yaml": "is not valid YAML",
    "wrong-kind.yaml": "v1/ConfigMap, not forwarder.dev/v1alpha1/ScheduledTask",
    "a-list.yaml": "is a list, not a ScheduledTask mapping",
    "dup-b.yaml": "skipped default/twin: already declared in dup-a.yaml",
    "huge.yaml": f"more than the {MAX_FILE_BYTES}-byte limit",
    "junk.yaml": "is not UTF-8 text",
    "bad-cron.yaml": "InvalidSpec: spec.schedule.cron: '61 * * * *' is not a valid cron",
    "unknown-task.yaml": "UnknownTask",
    "laughs.yaml": f"document 1 holds more than {MAX_VALUES} values",
    "deep-yaml.yaml": "is not usable YAML: nested too deeply",
    "deep-kwargs.yaml": f"InvalidSpec: spec.kwargs: is nested more than {MAX_DEPTH} levels deep",
    "huge-int.yaml": "is not usable YAML: Exceeds the limit (4300 digits)",
    "infinity.yaml": "document 1 inf is not a finite number",
}


def _write_folder(folder: Path) -> None:
    folder.mkdir(exist_ok=True)
    (folder / "good.yaml").write_text(GOOD.format(name="good", every="1s"))
    (folder / "dup-a.yaml").write_text(GOOD.format(name="twin", every="1s"))
    for name, content in BAD_FILES.items():
        (folder / name).write_bytes(content)


def test_sync_reports_each_bad_file_and_applies_the_good_ones(
    tmp_path: Path, core: Core, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "schedules"
    _write_folder(folder)
    store = core.store
    source = FolderSource(folder, store, known_tasks={"forwarder.ping"})
    with caplog.at_level(logging.INFO, logger="forwarder.folder"):
        outcome = source.sync()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    for name, says in REPORTS.items():
        assert any(m.startswith(name) and says in m for m in errors), (name, errors)
    # One line per problem, no tracebacks.
    assert len(errors) == len(REPORTS), errors
    assert not any(r.exc_info for r in caplog.records)
    assert outcome["default/good"] == "Scheduled"
    assert outcome["default/twin"] == "Scheduled"
    assert store.names() == {"default/good", "default/twin"}
    assert store.get("default/twin").entry.schedule == {"every": 1.0}  # type: ignore[union-attr]

    # A steady state logs nothing new.
    caplog.clear()
    source.sync()
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []

    # Fixing a bad file applies it; breaking a good file keeps its schedule.
    (folder / "malformed.yaml").write_text(GOOD.format(name="fixed", every="1s"))
    (folder / "good.yaml").write_bytes(b"\x00\xff not yaml at all")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="forwarder.folder"):
        source.sync()
    assert "default/fixed" in store.names()
    assert "default/good" in store.names()
    assert any(r.getMessage().startswith("good.yaml: skipped") for r in caplog.records), caplog.text


@pytest.mark.slow
def test_folder_process_survives_bad_files(
    tmp_path: Path, redis_url: str, core: Core, logs: Path
) -> None:
    folder = tmp_path / "schedules"
    folder.mkdir()
    (folder / "good.yaml").write_text(GOOD.format(name="good", every="1s"))
    env = forwarder_env(redis_url)
    source = start(
        [str(BIN / "python"), "-m", "forwarder_operator.folder", "--dir", str(folder)],
        env,
        logs / "folder.log",
        "folder",
    )
    store = core.store
    with running(source):
        eventually(lambda: "default/good" in store.names(), 60, message="good applied")
        # Bad files arrive one by one while the source is watching.
        (folder / "dup-a.yaml").write_text(GOOD.format(name="twin", every="1s"))
        for name, content in BAD_FILES.items():
            (folder / name).write_bytes(content)
        for name, says in REPORTS.items():
            eventually(
                lambda name=name, says=says: any(
                    line.split(" ", 1)[-1].startswith(name) and says in line
                    for line in source.output().splitlines()
                ),
                30,
                message=f"{name} reported",
            )
        assert source.alive()
        assert "Traceback" not in source.output()
        # It still reconciles: a new file is applied, a deleted one removed.
        (folder / "later.yaml").write_text(GOOD.format(name="later", every="5s"))
        eventually(lambda: "default/later" in store.names(), 30, message="later applied")
        (folder / "good.yaml").unlink()
        eventually(lambda: "default/good" not in store.names(), 30, message="good removed")
        assert store.names() == {"default/later", "default/twin"}
        assert source.alive()
