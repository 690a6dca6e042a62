"""Bearer-token authentication: tokens from env or a mounted Secret file, checked in constant time.

Every route except ``/healthz``, ``/readyz`` (and ``/metrics`` unless configured) depends on
:func:`require_token`. The file is re-read when its modification time changes, so rotating
the Secret needs no restart.
"""

from __future__ import annotations

import hmac
import logging
import threading
from pathlib import Path

from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from forwarder_api.errors import ApiError
from forwarder_api.settings import ApiSettings

log = logging.getLogger("forwarder.api")


class Unauthorized(ApiError):
    """No token or a wrong one."""

    status = 401
    headers = {"WWW-Authenticate": "Bearer"}


class TokenSet:
    """The accepted tokens: the env var's plus the token file's current lines."""

    def __init__(self, settings: ApiSettings) -> None:
        self._fixed = [t.get_secret_value() for t in settings.api_tokens if t.get_secret_value()]
        self._file = settings.api_token_file
        self._file_tokens: list[str] = []
        self._file_mtime: float | None = None
        self._lock = threading.Lock()

    def _from_file(self, path: Path) -> list[str]:
        try:
            mtime = path.stat().st_mtime
        except OSError as exc:
            log.warning("token file %s is unreadable: %s", path, exc)
            return []
        with self._lock:
            if mtime != self._file_mtime:
                lines = path.read_text().splitlines()
                self._file_tokens = [line.strip() for line in lines if line.strip()]
                self._file_mtime = mtime
            return self._file_tokens

    def current(self) -> list[str]:
        """Every accepted token right now."""
        tokens = list(self._fixed)
        if self._file is not None:
            tokens += self._from_file(self._file)
        return tokens

    def accepts(self, presented: str) -> bool:
        """Whether ``presented`` is a token, compared in constant time against each one."""
        given = presented.encode()
        matched = False
        for token in self.current():
            # No early exit: the time taken does not tell which token (or prefix) matched.
            matched |= hmac.compare_digest(given, token.encode())
        return matched


# auto_error=False: a missing header gets our 401 message, not FastAPI's 403.
bearer = HTTPBearer(auto_error=False, description="A token from FORWARDER_API_TOKENS")


def check_token(tokens: TokenSet, credentials: HTTPAuthorizationCredentials | None) -> None:
    """Raise 401 unless ``credentials`` carry an accepted bearer token."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>'")
    if not tokens.current():
        raise Unauthorized(
            "no API tokens are configured on the server "
            "(set FORWARDER_API_TOKENS or FORWARDER_API_TOKEN_FILE)"
        )
    if not tokens.accepts(credentials.credentials):
        raise Unauthorized("invalid bearer token")
