"""User ids are keyed-hashed at the edge: nothing the service writes holds a raw user id.

``Pseudonymizer(key).user(raw_id)`` is ``"u_" + HMAC-SHA256(key, raw_id)`` (first 128 bits, hex):
the same shopper gets the same pseudonym across restarts (so their events form one sequence
for training and ``DELETE /users/{id}`` finds them), while without the key the pseudonym
cannot be linked back to the id, not even by hashing candidate ids. The key comes from the
environment (``FIRSTCLICK_USER_KEY``) or a key file (``--user-key-file``, created with a fresh
random key when missing, mode 0600) and is never written into the artifacts: a key file inside
the artifacts directory is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

USER_KEY_ENV = "FIRSTCLICK_USER_KEY"
MIN_KEY_CHARS = 16
PSEUDONYM_PREFIX = "u_"
PSEUDONYM_HEX = 32  # 128 bits


class UserKeyError(ValueError):
    """A user-id key that cannot be used (too short, unreadable, inside the artifacts)."""


def _check_key(text: str, source: str) -> bytes:
    key = text.strip()
    if len(key) < MIN_KEY_CHARS:
        raise UserKeyError(f"{source}: the user-id key must be at least {MIN_KEY_CHARS} "
                           f"characters (got {len(key)}); generate one with `python -c "
                           "\"import secrets; print(secrets.token_hex(32))\"`")
    return key.encode("utf-8")


def key_from_env(environ: Mapping[str, str] | None = None) -> bytes | None:
    """The key in ``FIRSTCLICK_USER_KEY``, or None when unset."""
    value = (os.environ if environ is None else environ).get(USER_KEY_ENV)
    return None if value is None else _check_key(value, USER_KEY_ENV)


def key_from_file(path: str | os.PathLike[str], artifacts: str | os.PathLike[str] | None = None,
                  create: bool = True) -> bytes:
    """The key in ``path`` (one line); with ``create``, a missing file is created with a random
    256-bit key (mode 0600). Refuses a file inside ``artifacts``."""
    path = Path(path)
    if artifacts is not None:
        root = Path(artifacts).resolve()
        if path.resolve().is_relative_to(root):
            raise UserKeyError(f"--user-key-file {path} is inside the artifacts directory {root};"
                               " the key must never travel with the artifacts: keep it "
                               "elsewhere (e.g. .secrets/user.key)")
    if create and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it first: read theirs
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise UserKeyError(f"cannot read --user-key-file {path}: {reason}") from None
    return _check_key(text, f"--user-key-file {path}")


class Pseudonymizer:
    """Raw user ids -> stable keyed pseudonyms (see the module docstring)."""

    def __init__(self, key: bytes) -> None:
        if not isinstance(key, bytes) or len(key) < MIN_KEY_CHARS:
            raise UserKeyError(f"the user-id key must be at least {MIN_KEY_CHARS} bytes")
        self._key = key

    def user(self, raw_id: str) -> str:
        digest = hmac.new(self._key, raw_id.encode("utf-8"), hashlib.sha256).hexdigest()
        return PSEUDONYM_PREFIX + digest[:PSEUDONYM_HEX]

    def __repr__(self) -> str:  # never print the key
        return "Pseudonymizer(<key hidden>)"
