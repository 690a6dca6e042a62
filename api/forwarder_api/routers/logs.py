"""``/logs/{component}``: the tail of a component's log file in local mode.

In a cluster, components log to stdout and there is no file to read; the route says so
with a 404 rather than pretending the log is empty.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi import Path as PathParam

from forwarder_api.deps import Authorized, SettingsDep
from forwarder_api.errors import NotFound
from forwarder_api.models import LogTail

router = APIRouter(prefix="/logs", tags=["logs"], dependencies=[Authorized])

Component = Annotated[str, PathParam(pattern=r"^[a-z][a-z0-9-]{0,62}$")]
_BLOCK = 64 * 1024
_MAX_READ = 8 * 1024 * 1024


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of ``path``, reading backwards in blocks (at most 8 MiB)."""
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        end = position = handle.tell()
        data = b""
        while position > 0 and data.count(b"\n") <= lines and end - position < _MAX_READ:
            step = min(_BLOCK, position)
            position -= step
            handle.seek(position)
            data = handle.read(step) + data
    text = data.decode("utf-8", errors="replace")
    return text.splitlines()[-lines:]


@router.get("/{component}", responses={404: {"description": "No log file for it"}})
def component_log(
    component: Component,
    settings: SettingsDep,
    lines: Annotated[int, Query(ge=1, le=5000)] = 200,
) -> LogTail:
    """The last ``lines`` lines of ``<logs dir>/<component>.log``."""
    if settings.logs_dir is None:
        raise NotFound(
            f"no log files here: {component} logs to stdout "
            f"(in a cluster: kubectl logs deploy/<release>-{component})"
        )
    path = settings.logs_dir / f"{component}.log"
    if not path.is_file():
        known = sorted(p.stem for p in settings.logs_dir.glob("*.log"))
        raise NotFound(
            f"no log for component {component!r} in {settings.logs_dir} "
            f"(known: {', '.join(known) or 'none'})"
        )
    return LogTail(component=component, lines=tail(path, lines))
