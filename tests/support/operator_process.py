"""The real operator under test, always as its own ServiceAccount, and the check every
operator test shares: the API server refused it nothing.

The operator runs with the kubeconfig of ServiceAccount ``forwarder/forwarder-operator``
(the ``operator_kubeconfig`` fixture: a TokenRequest token, bound only by ``kubectl apply -k
manifests/rbac``), never as admin, so a request its RBAC does not allow is refused with 403.
kopf and the operator's client do not always fail on that: kopf logs "Not enough
permissions" and carries on, logs "Failed to post an event ... Code: 403" and drops the
Event, and the operator's loops log the refused request and back off. So both ways of running
it here read what it logged once it stopped, and fail the test on any refusal:

* :func:`running_operator`: a subprocess (``python -m forwarder_operator``, the
  ``forwarder operator`` command, or ``kopf run -m forwarder_operator``), its log file;
* :func:`operator_in_thread`: ``kopf.operator()`` on its own loop in a thread of the test
  process, the log records of the kopf, lightkube, aiohttp and Forwarder loggers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import kopf

from support.processes import Proc, forwarder_env, start

# Fast loops for tests; production defaults are 1 s and 60 s.
FAST = {
    "FORWARDER_OPERATOR_STATUS_INTERVAL": "0.3",
    "FORWARDER_OPERATOR_SWEEP_INTERVAL": "2",
    "FORWARDER_BEAT_MAX_LOOP_INTERVAL": "5",
}

REFUSED = re.compile(
    # The API server's words ("... is forbidden: User ... cannot patch ...", reason
    # Forbidden, kopf's APIForbiddenError), kopf's own, and a 403 where a status code is
    # printed: "(403)", "Code: 403"/'code': 403 from kopf,
    # "status 403", "HTTP 403". Case matters: object and namespace names are lowercase, and
    # a test named "..._forbidden_..." would otherwise match its own namespace in every line;
    # a bare 403 would match log timestamps, which end in milliseconds.
    r"is forbidden:|Forbidden|Not enough permissions"
    r"|(?:\(|\b[Cc]ode\W{0,3}|\b[Ss]tatus\W{0,3}|\bHTTP\S*\s)403\b"
)
LOGGERS = ("kopf", "lightkube", "aiohttp", "forwarder_operator", "forwarder_worker")
"""What the in-thread operator logs through (kopf.objects is under kopf)."""

COMMANDS = {
    "python": [sys.executable, "-m", "forwarder_operator"],
    "cli": [str(Path(sys.executable).parent / "forwarder"), "operator"],
    "kopf": [sys.executable, "-m", "kopf", "run", "-m", "forwarder_operator"],
}
"""``python -m forwarder_operator`` is what ``forwarder operator`` (``cli``) execs after its
Redis check; ``kopf`` is plain ``kopf run``, which reads no FORWARDER_OPERATOR_* flags."""


def refusals(text: str) -> list[str]:
    """The lines of ``text`` that say the API server refused a request."""
    return [line for line in text.splitlines() if REFUSED.search(line)]


def assert_never_refused(text: str, who: str) -> None:
    """Fail if ``who``'s log says a request was refused (Forbidden or HTTP 403)."""
    refused = refusals(text)
    assert not refused, f"{who} was refused by the API server:\n" + "\n".join(refused[:20])


def operator_env(
    redis_url: str, kubeconfig: Path, namespaces: Sequence[str] = (), **overrides: str
) -> dict[str, str]:
    """The environment of an operator (and of the worker and beat beside it) that uses
    ``kubeconfig`` and watches ``namespaces`` (every namespace when empty)."""
    env = forwarder_env(redis_url, KUBECONFIG=str(kubeconfig), **FAST)
    if namespaces:
        env["FORWARDER_OPERATOR_NAMESPACES"] = ",".join(namespaces)
    env.update(overrides)
    return env


def start_operator(
    env: dict[str, str], log: Path, *args: str, via: str = "python", name: str = "operator"
) -> Proc:
    """Start the operator as a subprocess. Prefer :func:`running_operator`, which checks its
    log; a test that starts it with this must call :func:`assert_never_refused` itself."""
    return start([*COMMANDS[via], *args], env, log, name)


@contextmanager
def running_operator(
    env: dict[str, str], log: Path, *args: str, via: str = "python", name: str = "operator"
) -> Iterator[Proc]:
    """The operator as a subprocess (``via``: see :data:`COMMANDS`), stopped on exit; then
    the test fails if the API server refused it anything, killed mid-run or not."""
    operator = start_operator(env, log, *args, via=via, name=name)
    try:
        yield operator
    except BaseException:
        sys.stderr.write(f"----- {name} log -----\n{operator.output()[-6000:]}\n")
        raise
    finally:
        operator.stop()
    assert_never_refused(operator.output(), name)


class _Records(logging.Handler):
    """Keeps every record's text, with its traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


class OperatorThread:
    """The operator running in a thread of the test process, and what it has logged."""

    def __init__(self, thread: threading.Thread, records: _Records) -> None:
        self.thread = thread
        self._records = records

    def output(self) -> str:
        """Its log so far (INFO and above), as :meth:`Proc.output` gives a subprocess's."""
        return "\n".join(self._records.lines)


@contextmanager
def operator_in_thread(env: dict[str, str]) -> Iterator[OperatorThread]:
    """The real kopf operator, in-process: ``kopf.operator()`` on its own loop in a thread,
    configured from ``env`` as ``forwarder operator`` would be (namespaces, standalone).

    Handlers come from the default registry (importing forwarder_operator registers them),
    exactly as ``kopf run -m forwarder_operator`` would load them. What it logs at INFO and
    above (:meth:`OperatorThread.output`) is read for refusals once it stops.
    """
    from forwarder_operator.settings import OperatorSettings

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    records = _Records()
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(records)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    config = OperatorSettings()
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(
                kopf.operator(
                    clusterwide=not config.operator_namespaces,
                    namespaces=config.operator_namespaces,
                    standalone=True,
                    memo=kopf.Memo(config=config),
                    stop_flag=stop,
                    ready_flag=ready,
                )
            )
        except BaseException as exc:
            errors.append(exc)

    import forwarder_operator  # noqa: F401  (registers the handlers)

    thread = threading.Thread(target=main, name="kopf-operator", daemon=True)
    thread.start()
    try:
        assert ready.wait(30), f"the operator did not start: {errors}"
        yield OperatorThread(thread, records)
    except BaseException:
        sys.stderr.write("----- operator log -----\n" + "\n".join(records.lines[-80:]) + "\n")
        raise
    finally:
        stop.set()
        thread.join(30)
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(records)
            logger.setLevel(level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert not thread.is_alive(), "the operator did not stop"
    assert not errors, errors
    assert_never_refused("\n".join(records.lines), "the in-thread operator")
