"""The ``forwarder`` command: the local stack (``up``), a status view, an offline preview,
the schedule commands (backfill, trigger, resume), and each component.

``forwarder up`` is local mode: an embedded Redis plus worker, beat, Flower, the API (when
installed) and the folder schedule source, each a child process whose output is shown with
a prefix and kept in a log file. Ctrl-C or SIGTERM stops every child, Redis included.
``forwarder status``, ``backfill``, ``trigger`` and ``resume`` act on that Redis (or the one
named), as the API's local mode does; ``forwarder preview`` needs no Redis.

The component subcommands (``worker``, ``beat``, ``flower``, ``api``, ``operator``, ``folder``)
run the same commands the Helm chart and compose.yaml run, so all three stay one code path.
They are started by module name, which keeps this core package free of imports of the
operator and the api.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from forwarder_worker import __version__
from forwarder_worker._redis.clients import RedisCredentialsRejected, check_credentials
from forwarder_worker.core import SCHEDULER, Core
from forwarder_worker.dispatch.backfill import (
    BackfillRefused,
    Window,
    format_instant,
    parse_instant,
)
from forwarder_worker.dispatch.dispatcher import Firing, Overrides
from forwarder_worker.local.supervisor import Supervisor, start_embedded_redis
from forwarder_worker.names import ENTRY_NAME
from forwarder_worker.schedules.files import FileError, declared
from forwarder_worker.schedules.model import InvalidSpec, ScheduledTaskSpec, parse_spec
from forwarder_worker.schedules.preview import MAX_PREVIEW, describe_slot, preview, upcoming
from forwarder_worker.schedules.store import Entry
from forwarder_worker.schedules.timing import utc_iso
from forwarder_worker.settings import Settings, get_settings
from forwarder_worker.values import check_json_value

CELERY = [sys.executable, "-m", "celery", "-A", "forwarder_worker.app"]
STATE_DIR = Path(".forwarder")
# Components that connect to Redis, checked for a refused password before they start.
REDIS_COMPONENTS = ("worker", "beat", "flower", "api", "operator", "folder")
INSECURE_FLOWER = "--insecure-no-auth"


def component_command(name: str, extra: Sequence[str] = ()) -> list[str]:
    """The command line of one component, as the chart runs it."""
    commands = {
        "worker": [*CELERY, "worker", "--loglevel=INFO"],
        "beat": [*CELERY, "beat", "--loglevel=INFO", "-S", SCHEDULER],
        # Flower reads its credentials from FLOWER_BASIC_AUTH, never from the command line.
        "flower": [*CELERY, "flower"],
        # The API's own HTTP protocol: uvicorn's, with head size and read time limits.
        "api": [
            *(sys.executable, "-m", "uvicorn", "--factory", "forwarder_api.main:create_app"),
            *("--http", "forwarder_api.http_guard:GuardedHttpToolsProtocol"),
        ],
        "operator": [sys.executable, "-m", "forwarder_operator"],
        "folder": [sys.executable, "-m", "forwarder_operator.folder"],
    }
    return [*commands[name], *extra]


class FlowerAuthMissing(RuntimeError):
    """Flower would start without authentication."""


def flower_arguments(extra: Sequence[str], environ: Mapping[str, str]) -> list[str]:
    """Flower's extra arguments, or FlowerAuthMissing if Flower would serve without auth.

    Flower shows every task's arguments and results and can revoke tasks and shut workers
    down, so it never runs open, except in local mode (``forwarder up`` sets
    FORWARDER_SCHEDULES_MODE=local) when the user asks for it with ``--insecure-no-auth``.
    """
    rest = [arg for arg in extra if arg != INSECURE_FLOWER]
    auth_args = ("--basic-auth", "--basic_auth", "--auth")
    if (
        environ.get("FLOWER_BASIC_AUTH")
        or environ.get("FLOWER_AUTH")
        or any(arg.startswith(auth_args) for arg in rest)
    ):
        return rest
    if len(rest) < len(extra):
        if environ.get("FORWARDER_SCHEDULES_MODE") == "local":
            return rest
        raise FlowerAuthMissing(f"{INSECURE_FLOWER} is only allowed in local mode (forwarder up)")
    raise FlowerAuthMissing(
        "refusing to start Flower without authentication: set FLOWER_BASIC_AUTH=user:password "
        f"(or Flower's --auth with OAuth), or pass {INSECURE_FLOWER} in local mode"
    )


def flower_limits(settings: Settings, extra: Sequence[str]) -> list[str]:
    """Flower's ``--max_tasks`` and ``--max_workers`` from settings, each unless ``extra``
    gives it: Flower keeps every task event in memory, and would keep 100,000 of them."""
    limits = {
        "--max_tasks": settings.flower_max_tasks,
        "--max_workers": settings.flower_max_workers,
    }
    return [
        f"{option}={value}"
        for option, value in limits.items()
        if not any(arg.startswith((option, option.replace("_", "-"))) for arg in extra)
    ]


def _default_schedules() -> Path:
    return Path("manifests/samples")


def cmd_up(args: argparse.Namespace) -> int:
    """Run the whole stack locally until Ctrl-C or SIGTERM."""

    state = Path(args.state_dir)
    logs_dir = state / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    schedules = Path(args.schedules)
    if not schedules.is_dir():
        print(f"forwarder up: schedules folder {schedules} does not exist", file=sys.stderr)
        return 2
    supervisor = Supervisor(logs_dir)
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    redis_server = None
    redis_url = args.redis_url
    if redis_url is not None:
        try:
            check_credentials(Settings(redis_url=redis_url))
        except RedisCredentialsRejected as exc:
            print(f"forwarder up: {exc}", file=sys.stderr)
            return 2
    else:
        redis_server = start_embedded_redis()
        redis_url = f"redis://127.0.0.1:{redis_server.port}/0"
        supervisor.say("redis", f"embedded Redis (Valkey) on {redis_url}")
    (state / "redis-url").write_text(redis_url + "\n")

    flower_user = args.flower_user or "forwarder"
    flower_password = args.flower_password or secrets.token_urlsafe(12)
    api_token = args.api_token or secrets.token_urlsafe(24)
    env = dict(os.environ)
    env.update(
        FORWARDER_REDIS_URL=redis_url,
        FORWARDER_LOGS_DIR=str(logs_dir.resolve()),
        FORWARDER_HISTORY_DIR=str((state / "history").resolve()),
        FORWARDER_SCHEDULES_MODE="local",
        FORWARDER_SCHEDULES_DIR=str(schedules.resolve()),
        FORWARDER_FLOWER_URL=f"http://127.0.0.1:{args.flower_port}",
        FORWARDER_FLOWER_USER=flower_user,
        FORWARDER_FLOWER_PASSWORD=flower_password,
        FORWARDER_API_TOKENS=api_token,
        FLOWER_BASIC_AUTH=f"{flower_user}:{flower_password}",
        PYTHONUNBUFFERED="1",
    )
    try:
        supervisor.start(
            "worker",
            component_command(
                "worker", ["-n", "worker@%h", f"--concurrency={args.concurrency}", "-Q", "default"]
            ),
            env,
        )
        supervisor.start("beat", component_command("beat"), env)
        supervisor.start(
            "flower",
            component_command(
                "flower",
                [
                    "--address=127.0.0.1",
                    f"--port={args.flower_port}",
                    *flower_limits(get_settings(), ()),
                ],
            ),
            env,
        )
        supervisor.start("folder", component_command("folder", ["--dir", str(schedules)]), env)
        if importlib.util.find_spec("forwarder_api") and _api_available():
            supervisor.start(
                "api",
                component_command("api", ["--host", "127.0.0.1", "--port", str(args.api_port)]),
                env,
            )
            supervisor.say(
                "up",
                f"API:    http://127.0.0.1:{args.api_port}/docs "
                f"(Authorization: Bearer {api_token})",
            )
            supervisor.say(
                "up", f"UI:     http://127.0.0.1:{args.api_port}/ui/ (sign in with that token)"
            )
        supervisor.say(
            "up",
            f"Flower: http://127.0.0.1:{args.flower_port} "
            f"(user {flower_user}, password {flower_password})",
        )
        supervisor.say(
            "up",
            f"Schedules from {schedules}; logs in {logs_dir}; "
            "`forwarder status` shows runs; Ctrl-C stops everything",
        )
        while not stopping.wait(0.5):
            exited = supervisor.first_exited()
            if exited is not None:
                supervisor.say(
                    "up",
                    f"{exited.name} exited with code {exited.popen.returncode}; stopping the stack",
                )
                return 1
        supervisor.say("up", "stopping")
        return 0
    finally:
        supervisor.stop()
        if redis_server is not None:
            redis_server.stop()
        supervisor.say("up", "stopped")


def _api_available() -> bool:
    return importlib.util.find_spec("forwarder_api.main") is not None


def _redis_settings(args: argparse.Namespace) -> Settings:
    """Settings for the Redis that ``--redis-url``, ``FORWARDER_REDIS_URL`` or the running
    ``forwarder up`` (its state folder) names, in that order."""
    url = args.redis_url or os.environ.get("FORWARDER_REDIS_URL")
    saved = Path(args.state_dir) / "redis-url"
    if url is None and saved.exists():
        url = saved.read_text().strip()
    return Settings(redis_url=url) if url else Settings()


def cmd_status(args: argparse.Namespace) -> int:
    """Print every schedule and the most recent runs."""
    settings = _redis_settings(args)
    core = Core.from_settings(settings)
    store, runs = core.store, core.runs
    try:
        entries = store.entries()
    except redis.RedisError as exc:
        print(
            f"forwarder status: cannot reach Redis at {settings.redacted_redis_url}: {exc}",
            file=sys.stderr,
        )
        return 1
    rows = [("SCHEDULE", "TASK", "WHEN", "SUSPEND", "NEXT", "LAST", "RUNS", "FAILED")]
    for stored in entries:
        entry, summary = stored.entry, runs.summary(stored.entry.name, limit=1)
        when = describe_timing(entry.schedule)
        rows.append(
            (
                entry.name,
                entry.task,
                when,
                # Paused by suspendAfterFailures: say so where suspend is read.
                str(entry.suspend).lower()
                if stored.paused is None
                else f"after {stored.paused} failures",
                utc_iso(next(iter(upcoming(entry, stored.meta, stored.due, 1)), None)) or "-",
                summary.last_run.state if summary.last_run else "-",
                str(summary.total),
                str(summary.failed),
            )
        )
    _table(rows)
    print()
    recent = [("RUN", "TASK", "SCHEDULE", "STATE", "CREATED", "DETAIL")]
    for record in runs.recent(limit=args.runs):
        detail = record.error or record.reason or (record.result or "")
        recent.append(
            (
                record.id,
                record.task,
                record.schedule or "-",
                record.state,
                utc_iso(record.created) or "-",
                detail[:60],
            )
        )
    _table(recent)
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    """Validate a ScheduledTask YAML file offline (no Redis, no cluster) and print the next
    fire times of each schedule in it, in its zone and in UTC, marking those a DST change
    moved: a dry run before ``kubectl apply``. A problem is one line on stderr, exit 1."""
    path = Path(args.file)
    try:
        documents = declared(path)
    except (FileError, OSError) as exc:
        print(f"forwarder preview: {path}: {exc}", file=sys.stderr)
        return 1
    if not documents:
        print(f"forwarder preview: {path}: holds no ScheduledTask", file=sys.stderr)
        return 1
    checked: list[tuple[str, ScheduledTaskSpec]] = []
    for item in documents:
        try:
            checked.append((item.entry_name, parse_spec(item.spec)))
        except InvalidSpec as exc:
            print(f"forwarder preview: {path}: {item.entry_name}: {exc}", file=sys.stderr)
            return 1
    for index, (name, spec) in enumerate(checked):
        if index:
            print()
        entry = Entry.from_spec(name, spec)
        times = preview(spec, args.count)
        print(f"{name}: {spec.schedule.describe()} in {spec.time_zone}, next {len(times)}:")
        rows = [(f"LOCAL ({spec.time_zone})", "UTC", "DST")]
        for at in times:
            slot = describe_slot(entry, at)
            rows.append((slot.local, slot.utc, slot.dst or "-"))
        _table(rows)
    return 0


def _preview_count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_PREVIEW:
        raise argparse.ArgumentTypeError(f"must be 1 to {MAX_PREVIEW}")
    return value


class Refused(Exception):
    """A schedule command the state of Redis refuses; the message is the one line shown."""


def _on_schedule(args: argparse.Namespace, command: str, act: Callable[[Core, str], None]) -> int:
    """Run ``act`` on the schedule ``args.schedule`` names, on the Redis ``status`` reads (as
    the API's local mode does): a refusal is one line on stderr and exit 2, an unreachable
    Redis exit 1."""
    settings = _redis_settings(args)
    core = Core.from_settings(settings)
    try:
        if not ENTRY_NAME.match(args.schedule):
            raise Refused(f"{args.schedule!r} is not NAMESPACE/NAME")
        act(core, args.schedule)
    except (Refused, BackfillRefused, LookupError) as exc:
        print(f"forwarder {command}: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(
            f"forwarder {command}: cannot reach Redis at {settings.redacted_redis_url}: {exc}",
            file=sys.stderr,
        )
        return 1
    finally:
        core.close()
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    """Run each slot of a past window of one schedule once."""

    def act(core: Core, name: str) -> None:
        window = Window(parse_instant(args.start, "start"), parse_instant(args.end, "end"))
        done = core.backfill.run(name, window)
        print(done.summary())
        rows = [("SCHEDULED AT", "RUN")]
        rows += [(format_instant(o.firing.slot), o.run_id) for o in done.sent]
        rows += [(format_instant(o.firing.slot), f"skipped: {o.reason}") for o in done.skipped]
        rows += [(format_instant(slot), "already run") for slot in done.done]
        rows += [(format_instant(slot), "left to the schedule") for slot in done.beats]
        if len(rows) > 1:
            _table([rows[0], *sorted(rows[1:])])

    return _on_schedule(args, "backfill", act)


def _json_option(text: str | None, option: str, kind: type) -> Any:
    """``--args``/``--kwargs``: JSON of ``kind`` (a list or an object), or None."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise Refused(f"{option} is not JSON: {exc}") from None
    if not isinstance(value, kind):
        raise Refused(f"{option} must be a JSON {'array' if kind is list else 'object'}")
    try:
        check_json_value(value)  # what the api's trigger takes, no more
    except ValueError as exc:
        raise Refused(f"{option} {exc}") from None
    return value


def cmd_trigger(args: argparse.Namespace) -> int:
    """Run one schedule now, optionally with other arguments (``--args`` replace the spec's,
    ``--kwargs`` are merged over them), as ``POST /schedules/{ns}/{name}/trigger`` does."""

    def act(core: Core, name: str) -> None:
        overrides = Overrides(
            _json_option(args.args, "--args", list), _json_option(args.kwargs, "--kwargs", dict)
        )
        stored = core.store.get(name)
        if stored is None:
            raise LookupError(f"no schedule {name} in Redis (not applied, or its spec is invalid)")
        given = overrides if overrides.as_json() else None
        (outcome,) = core.dispatcher.fire([Firing(stored.entry, time.time(), "trigger", given)])
        if not outcome.sent:
            raise Refused(f"{name} not triggered: {outcome.reason}")
        print(f"{name}: run {outcome.run_id} sent")

    return _on_schedule(args, "trigger", act)


def cmd_resume(args: argparse.Namespace) -> int:
    """Resume a schedule that ``suspendAfterFailures`` paused, as ``POST .../resume`` does."""

    def act(core: Core, name: str) -> None:
        if not core.store.resume(name):
            raise Refused(f"{name} is not suspended after failures (or is not in Redis)")
        print(f"{name}: resumed")

    return _on_schedule(args, "resume", act)


def describe_timing(schedule: dict[str, Any]) -> str:
    """``every 30s``, ``cron */5 * * * *`` or ``at <time>`` for a stored schedule."""
    if "every" in schedule:
        return f"every {schedule['every']}s"
    if "cron" in schedule:
        return f"cron {schedule['cron']}"
    return f"at {utc_iso(float(schedule['at']))}"


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def cmd_component(args: argparse.Namespace, extra: list[str]) -> int:
    """Replace this process with one component (what the chart's containers run)."""
    try:
        if args.command == "flower":
            extra = [*flower_arguments(extra, os.environ), *flower_limits(get_settings(), extra)]
        if args.command in REDIS_COMPONENTS:
            check_credentials(get_settings())
    except (FlowerAuthMissing, RedisCredentialsRejected) as exc:
        print(f"forwarder {args.command}: {exc}", file=sys.stderr)
        return 2
    defaults = {"api": ["--port", "7500"], "flower": ["--port=7501"]}.get(args.command, [])
    if any(arg.startswith("--port") for arg in extra):
        defaults = []
    command = component_command(args.command, [*defaults, *extra])
    # Our own fixed component command (an argv list, no shell); only its options come from
    # the caller, as they would on the component's own command line.
    os.execvp(command[0], command)  # noqa: S606  # nosec B606


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="forwarder", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the whole stack locally (embedded Redis, samples)")
    up.add_argument(
        "--schedules",
        default=str(_default_schedules()),
        help="folder of ScheduledTask YAML files (default: manifests/samples)",
    )
    up.add_argument("--redis-url", help="use this Redis instead of starting an embedded one")
    up.add_argument("--flower-port", type=int, default=7501)
    up.add_argument("--api-port", type=int, default=7500)
    up.add_argument("--flower-user", default=os.environ.get("FORWARDER_FLOWER_USER"))
    up.add_argument("--flower-password", default=os.environ.get("FORWARDER_FLOWER_PASSWORD"))
    up.add_argument("--api-token", default=os.environ.get("FORWARDER_API_TOKEN"))
    up.add_argument("--concurrency", type=int, default=2)
    up.add_argument("--state-dir", default=str(STATE_DIR), help="logs and state (.forwarder)")
    status = sub.add_parser("status", help="show schedules and recent runs")
    status.add_argument("--redis-url")
    status.add_argument("--runs", type=int, default=10, help="recent runs to show")
    status.add_argument("--state-dir", default=str(STATE_DIR))
    preview_cmd = sub.add_parser(
        "preview",
        help="validate a ScheduledTask YAML file offline and print its next fire times",
    )
    preview_cmd.add_argument("file", help="a YAML file of one or more ScheduledTasks")
    preview_cmd.add_argument(
        "-n", "--count", type=_preview_count, default=10, help="how many fire times (10)"
    )
    backfill = sub.add_parser(
        "backfill",
        help="run each slot of a past window of a schedule once (on Redis, like status)",
    )
    backfill.add_argument("schedule", metavar="NAMESPACE/NAME")
    backfill.add_argument("--start", required=True, help="RFC 3339, included")
    backfill.add_argument("--end", required=True, help="RFC 3339, excluded; not after now")
    trigger = sub.add_parser(
        "trigger", help="run a schedule now, optionally with other arguments (on Redis)"
    )
    trigger.add_argument("schedule", metavar="NAMESPACE/NAME")
    trigger.add_argument("--args", help="a JSON array: replaces the spec's args")
    trigger.add_argument("--kwargs", help="a JSON object: merged over the spec's kwargs")
    resume = sub.add_parser("resume", help="resume a schedule suspended after failures (on Redis)")
    resume.add_argument("schedule", metavar="NAMESPACE/NAME")
    for on_redis in (backfill, trigger, resume):
        on_redis.add_argument("--redis-url")
        on_redis.add_argument("--state-dir", default=str(STATE_DIR))
    for name in REDIS_COMPONENTS:
        sub.add_parser(name, help=f"run the {name} (extra arguments are passed on)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(list(argv) if argv is not None else None)
    if args.command == "up" and not extra:
        return cmd_up(args)
    if args.command == "status" and not extra:
        return cmd_status(args)
    if args.command == "preview" and not extra:
        return cmd_preview(args)
    commands = {"backfill": cmd_backfill, "trigger": cmd_trigger, "resume": cmd_resume}
    if args.command in commands and not extra:
        return commands[args.command](args)
    if args.command in ("up", "status", "preview", *commands):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return cmd_component(args, extra)


if __name__ == "__main__":
    raise SystemExit(main())
