"""Taught classes named in an engine request (`"classes": "@…"`): a teach job of that engine (`@job:<id>`),
or a taught-classes file on this computer, which is always sent to the engine (`POST /v1/classes`) and named
`@upload:<id>` — so an engine on another computer, or a local one whose folders do not hold the file, uses it
too, by the same code. What was sent is remembered per engine and file for this session and sent again when
the file changed (modification time, size) or the engine no longer has it (restarted, or the upload
expired: the request is then made once more with the file sent anew)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, TypeVar

from qgis_farslip.client import EngineClient, EngineError

T = TypeVar("T")

FORGOTTEN_TEACH = ("the engine no longer has the taught classes (it was restarted, or they expired): teach them again "
                   "(Labels tab → Teach from labels), or press Clear beside them to segment by the class names only")

_SENT: dict[tuple[str, str], tuple[tuple[int, int], str]] = {}  # (engine URL, file) → ((mtime, size), upload id)
_LOCK = threading.Lock()


def _send(client: EngineClient, path: Path) -> str:
    """The upload id of `path` on the engine: the one sent before while the file is unchanged, else sent now."""
    key, stat = (client.url, str(path)), path.stat()
    version = (stat.st_mtime_ns, stat.st_size)
    with _LOCK:
        known = _SENT.get(key)
    if known is not None and known[0] == version:
        return known[1]
    try:
        upload_id = client.send_classes(path)["upload_id"]
    except EngineError as exc:
        if exc.status in (404, 405):  # an engine older than POST /v1/classes
            raise EngineError(f"this engine cannot receive {path.name} (an older version): update the engine, "
                              "or teach the classes again with it (Labels tab → Teach from labels)") from None
        raise EngineError(str(exc).replace("the body", path.name), exc.status) from None
    with _LOCK:
        _SENT[key] = (version, upload_id)
    if known is not None:  # the file changed: its old copy is of no use to the engine
        try:
            client.delete_upload(known[1])
        except EngineError:
            pass
    return upload_id


def _forget(client: EngineClient, path: Path) -> None:
    with _LOCK:
        _SENT.pop((client.url, str(path)), None)


def classes_value(client: EngineClient, taught: str) -> str:
    """What a request names as `classes` for taught classes `taught` ("job:<id>", or a file's path): the
    teach job, the file sent to the engine, or — for a path that is no file here — the path as typed (a file
    only the engine's computer has)."""
    if taught.startswith("job:"):
        return f"@{taught}"
    path = Path(taught).expanduser()
    if not path.is_file():
        return f"@{taught}"
    return f"@upload:{_send(client, path.resolve())}"


def _gone(exc: EngineError, value: str) -> bool:
    """The engine answered that it no longer has the upload `value` names."""
    return exc.status == 404 and value.startswith("@upload:") and value[len("@upload:"):] in str(exc)


def with_taught(client: EngineClient, taught: str | None, payload: dict, call: Callable[[dict], T]) -> T:
    """`call(payload)`, its `classes` the taught classes `taught` names (when given); made once more with the
    file sent again when the engine no longer has the copy it was sent."""
    if not taught:
        return call(payload)
    value = classes_value(client, taught)
    try:
        return call(dict(payload, classes=value))
    except EngineError as exc:
        if taught.startswith("job:") and "no teach job" in str(exc):
            raise EngineError(FORGOTTEN_TEACH) from None
        if not _gone(exc, value):
            raise
    _forget(client, Path(taught).expanduser().resolve())
    return call(dict(payload, classes=classes_value(client, taught)))
