"""The API's bearer token: one random token in the user's config folder, readable by the owner only."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from engine import config

TOKEN_FILE = "token"


def token_path() -> Path:
    return config.config_dir() / TOKEN_FILE


def load_or_create_token(path: Path | None = None) -> str:
    """Read the token, creating it (mode 0600, folder 0700) on first use."""
    path = path or token_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
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


def token_matches(expected: str, header: str | None) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[len("Bearer "):].strip().encode(), expected.encode())
