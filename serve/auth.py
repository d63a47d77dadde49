"""API-key auth: header ``X-API-Key``; keys from ``FIRSTCLICK_API_KEYS`` (comma-separated) or a
file (one key per line, ``#`` comments and blank lines skipped).

Auth is never turned off by accident: a variable or file that is set but holds no usable key
(``'#secret'``, ``' '``, ``','``) refuses to start; running without keys is an explicit
choice (``python -m serve --no-auth``, or ``create_app(api_keys=set())``), logged as a warning.

A presented key is compared with every configured key by ``hmac.compare_digest``, all of them
every time, so neither the answer's body nor its timing says whether a key exists or how much
of one matched; a missing key takes the same path as a wrong one.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

API_KEY_HEADER = "X-API-Key"
API_KEYS_ENV = "FIRSTCLICK_API_KEYS"
UNAUTHORIZED_DETAIL = "missing or invalid API key"
OPEN_PATHS: frozenset[str] = frozenset({"/healthz", "/"})
# the web page's own files, examples and benchmark reports: public, they hold no shop data
OPEN_PREFIXES: tuple[str, ...] = ("/ui/",)


class AuthConfigError(ValueError):
    """An API-keys file or variable that cannot be used (unreadable, no key, bad characters)."""


def _clean_keys(raw: Iterable[str], source: str) -> set[str]:
    keys = set()
    for key in raw:
        key = key.strip()
        if not key or key.startswith("#"):
            continue
        if not key.isascii() or not key.isprintable() or any(c.isspace() for c in key):
            raise AuthConfigError(f"{source}: API keys must be printable ASCII without spaces; "
                                  "one key per line (or comma-separated in the variable)")
        keys.add(key)
    return keys


def keys_from_env(environ: Mapping[str, str] | None = None) -> set[str]:
    """Keys in ``FIRSTCLICK_API_KEYS`` (comma-separated); empty when unset. Set but holding no
    usable key (only blanks, commas or ``#`` comments) raises AuthConfigError: an operator who
    set it meant auth to be on."""
    environ = os.environ if environ is None else environ
    if API_KEYS_ENV not in environ:
        return set()
    value = environ[API_KEYS_ENV]
    keys = _clean_keys(value.split(","), API_KEYS_ENV)
    if not keys:
        raise AuthConfigError(f"{API_KEYS_ENV} is set but holds no usable key (got "
                              f"{value[:20]!r}); set comma-separated keys, or unset it and "
                              "pass --no-auth to serve without auth")
    return keys


def keys_from_file(path: str | Path) -> set[str]:
    """Keys in a file, one per line; AuthConfigError when unreadable or holding none."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise AuthConfigError(f"cannot read --api-keys-file {path}: {reason}") from None
    keys = _clean_keys(text.splitlines(), f"--api-keys-file {path}")
    if not keys:
        raise AuthConfigError(f"--api-keys-file {path} holds no key; write one key per line")
    return keys


class ApiKeyCheck:
    """Checks the ``X-API-Key`` header of an ASGI scope against a fixed set of keys."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = tuple(k.encode("ascii") for k in sorted(set(keys)))

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def required_for(self, path: str) -> bool:
        return self.enabled and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES)

    def allows(self, presented: bytes | None) -> bool:
        """True when ``presented`` equals one of the keys; compares against all of them."""
        candidate = presented or b""
        match = False
        for key in self._keys:
            match |= hmac.compare_digest(candidate, key)
        return match and presented is not None

    def allows_scope(self, scope: Mapping) -> bool:
        name = API_KEY_HEADER.lower().encode("latin-1")
        presented = next((value for header, value in scope.get("headers", ())
                          if header.lower() == name), None)
        return self.allows(presented)


class ApiKeyMiddleware:
    """ASGI middleware: with keys configured, every path but /healthz and the page's files
    (OPEN_PATHS, OPEN_PREFIXES) needs a valid key; the 401 body is the same for a missing and a
    wrong key. Before routing, so an unauthenticated client learns nothing about which paths
    exist."""

    def __init__(self, app: ASGIApp, check: ApiKeyCheck) -> None:
        self.app = app
        self.check = check

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and self.check.required_for(scope["path"])
                and not self.check.allows_scope(scope)):
            response = JSONResponse({"detail": UNAUTHORIZED_DETAIL}, status_code=401,
                                    headers={"WWW-Authenticate": API_KEY_HEADER})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
