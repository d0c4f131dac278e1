"""Taught-classes files (`*.classes.json`, written by Teach from labels, the Processing algorithm or `farslip
classes learn`) kept for later sessions: every file taught or chosen is remembered (QgsSettings, newest
first), any in the project's folder (and two folder levels below it) is found too, and a file's header
— classes, the model it was made with, α, polygons — is read here, without the engine. The engine checks
the weights themselves when a run uses the file, and refuses a file made with another model."""

from __future__ import annotations

import json
import time
from pathlib import Path

from qgis.core import QgsSettings

from qgis_farslip.client import EngineError
from qgis_farslip.outputs import class_title, safe_name
from qgis_farslip.teaching import Taught

KEY = "farslip/taught_files"
SUFFIX = ".classes.json"
FORMAT = "farslip-taught-classes/1"
MAX_REMEMBERED = 20
SCAN_LEVELS = ("*", "*/*", "*/*/*")  # the project folder, farslip/, farslip/taught_…/


def read_taught(path: str | Path) -> Taught:
    """The taught classes a file holds, or an EngineError saying in one line why it cannot be used."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise EngineError(f"cannot read {path.name}: {exc.strerror or exc}") from None
    except ValueError:
        data = None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EngineError(f"{path.name} is not a taught-classes file: choose one made by Labels → Teach from labels")
    try:
        made = data.get("made") if isinstance(data.get("made"), dict) else {}
        polygons = sum(int(n) for n in (made.get("polygons") or {}).values())
        return Taught(job_id=None, classes=[str(c) for c in data["classes"]], polygons=polygons, sent=polygons,
                      alpha=float(data["alpha"]), taught=list(data["prototypes"]), path=path,
                      model=str(data["model"]["name"]))
    except (KeyError, TypeError, ValueError):
        raise EngineError(f"{path.name} is a damaged taught-classes file: teach the classes again") from None


def keep_as(taught: Taught, site: str) -> Taught:
    """A teach job's downloaded `result.classes.json` renamed `SITE.classes.json` (SITE: the raster's name)."""
    if taught.path is not None and taught.path.exists():
        taught.path = taught.path.replace(taught.path.with_name(safe_name(site) + SUFFIX))
    return taught


def model_label(name: str) -> str:
    """A model as the dock shows it: a release name, or a checkpoint file's name."""
    return Path(name).name if "/" in name or "\\" in name else name


def label(taught: Taught) -> str:
    """How a file is listed: "small — water, grass, roof +1 · 26 Nov 14:05"."""
    stem = taught.path.name[:-len(SUFFIX)] if taught.path.name.endswith(SUFFIX) else taught.path.stem
    if stem == "result":  # a teach job's own name: the folder says more
        stem = taught.path.parent.name
    when = time.strftime("%d %b %H:%M", time.localtime(taught.path.stat().st_mtime))
    return f"{stem} — {class_title(taught.classes, 40)} · {when}"


def remembered() -> list[str]:
    value = QgsSettings().value(KEY, []) or []
    return [str(v) for v in ([value] if isinstance(value, str) else value)]


def remember(path: str | Path) -> None:
    """Put a file first in the remembered list (QgsSettings: it outlives QGIS sessions and projects)."""
    path = str(Path(path).resolve())
    QgsSettings().setValue(KEY, [path] + [p for p in remembered() if p != path][:MAX_REMEMBERED - 1])


def known_files(folders: list[str]) -> list[Taught]:
    """The usable taught-classes files: remembered ones that still exist and those in `folders` (the
    project's, the results') and below, newest first; files that are not taught classes are left out."""
    candidates: dict[Path, None] = {}
    for raw in remembered():
        candidates[Path(raw)] = None
    for folder in folders:
        if folder and Path(folder).is_dir():
            for level in SCAN_LEVELS:
                for path in sorted(Path(folder).glob(level + SUFFIX)):
                    candidates[path.resolve()] = None
    found = []
    for path in candidates:
        try:
            found.append(read_taught(path))
        except EngineError:
            continue
    return sorted(found, key=lambda t: t.path.stat().st_mtime, reverse=True)
