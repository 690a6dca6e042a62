"""The dashboard at ``/ui``: the static files of ``forwarder_api/ui/``, with strict headers.

The dashboard is plain HTML, CSS and JavaScript modules shipped as package data (no build
step, no CDN). Its pages only call the API's own routes with the user's bearer token, so
serving these files is the one route it adds; they hold no data and need no token.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.exceptions import HTTPException
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

UI_DIR = Path(__file__).parent / "ui"
PREFIX = "/ui"

# No inline script or style anywhere (the pages build their DOM with createElement and set
# sizes through CSSOM), so an injected <script> or style attribute could never run.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Always revalidated (ETag): a new release's files are never mixed with cached old ones.
    "Cache-Control": "no-cache",
}


class DashboardFiles(StaticFiles):
    """Starlette's static files, each answer (404s included) with :data:`SECURITY_HEADERS`."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            response = await super().get_response(path, scope)
        except HTTPException as exc:
            # Starlette raises its 404/405; answered here, they keep the headers too.
            return PlainTextResponse(exc.detail, exc.status_code, headers=SECURITY_HEADERS)
        response.headers.update(SECURITY_HEADERS)
        return response


def install_dashboard(app: FastAPI) -> None:
    """Serve the dashboard at ``/ui/`` (and send ``/ui`` there)."""

    @app.get(PREFIX, include_in_schema=False)
    def dashboard_root() -> Response:
        return RedirectResponse(f"{PREFIX}/", status_code=308, headers=SECURITY_HEADERS)

    app.mount(PREFIX, DashboardFiles(directory=UI_DIR, html=True), name="dashboard")
