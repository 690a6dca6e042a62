"""The run URL a submission answers with (body ``url`` and ``Location``) is the one Starlette
builds from the request, whatever host, scheme and root path the client used, although the
API caches the base part per address."""

from __future__ import annotations

from typing import Any

import pytest
from forwarder_api.routers.runs import run_path
from forwarder_api.routers.tasks import _runs_url
from starlette.datastructures import URLPath
from starlette.requests import Request


def _scope(**overrides: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "scheme": "http",
        "server": ("127.0.0.1", 7500),
        "root_path": "",
        "path": "/tasks/forwarder.ping/runs",
        "query_string": b"",
        "headers": [(b"host", b"api.example:7500"), (b"content-type", b"application/json")],
    }
    scope.update(overrides)
    return scope


@pytest.mark.parametrize(
    "scope",
    [
        _scope(),
        _scope(scheme="https", headers=[(b"host", b"forwarder.example")]),
        _scope(headers=[]),  # no Host header: the server address
        _scope(root_path="/forwarder"),
        _scope(root_path="/forwarder/", app_root_path="/api"),
        _scope(server=None, headers=[(b"host", b"[::1]:8080")]),
    ],
)
def test_the_run_url_is_what_starlette_would_build(scope: dict[str, Any]) -> None:
    run_id = "0b0d9d8e-4a53-4f8e-9d77-1c6b8f0f3c11"
    expected = str(URLPath(run_path(run_id)).make_absolute_url(Request(scope).base_url))
    assert _runs_url(scope) + run_id == expected
    # Cached per address: a second request from the same address gets the same answer.
    assert _runs_url(scope) + run_id == expected
