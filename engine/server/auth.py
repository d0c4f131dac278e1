"""The API's bearer token: one random token in the user's config folder, readable by the owner only."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
from pathlib import Path

from engine import config

TOKEN_FILE = "token"
log = logging.getLogger("farslip.api")


def token_path() -> Path:
    return config.config_dir() / TOKEN_FILE


def load_or_create_token(path: Path | None = None) -> str:
    """Read the token, creating it (mode 0600, folder 0700) on first use. A folder or token file that
    others can read (made by hand, or by an older version) is made private again, with a warning."""
    path = path or token_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _make_private(path.parent, 0o700)
    if path.exists():
        _make_private(path, 0o600)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
        path.unlink()
        return load_or_create_token(path)
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(token + "\n")
    return token


def _make_private(path: Path, mode: int) -> None:
    loose = path.stat().st_mode & 0o077
    if loose:
        log.warning("%s was readable by others (mode %o); made it %o", path, path.stat().st_mode & 0o777, mode)
        os.chmod(path, mode)


def token_matches(expected: str, header: str | None) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode(), expected.encode())
