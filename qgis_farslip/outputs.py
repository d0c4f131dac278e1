"""Where results go and what they are called: the project's folder by default, names that say which
raster, which classes and when (so two runs never look alike in the Layers panel or on disk)."""

from __future__ import annotations

import re
import time
import unicodedata
from pathlib import Path

from qgis.core import QgsProject

MAX_TITLE = 60


def default_output_folder(project: QgsProject | None = None) -> str:
    """`<project folder>/farslip` for a saved project, else `~/FarSLIP` (never a temporary folder)."""
    home = (project or QgsProject.instance()).homePath()
    return str(Path(home) / "farslip") if home else str(Path.home() / "FarSLIP")


def results_folder(typed: str, project: QgsProject | None = None) -> Path:
    """The folder a run's results go under, from the *Save to* field: empty → the default
    (`default_output_folder`); `~` → the home folder; a relative path → under the saved project's folder
    (else the home folder) — never QGIS's working folder, which a layer's relative source would then
    depend on."""
    text = typed.strip()
    if not text:
        return Path(default_output_folder(project))
    folder = Path(text).expanduser()
    if not folder.is_absolute():
        home = (project or QgsProject.instance()).homePath()
        folder = Path(home or Path.home()) / folder
    return folder


def fresh_folder(folder: Path) -> Path:
    """`folder`, made now or found empty — or `<folder>-2`, `-3`… when another run's files are in it (two
    runs started in the same second): one run's files never land in, or replace, another's."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        candidate = folder if n == 1 else folder.with_name(f"{folder.name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            if candidate.is_dir() and not any(candidate.iterdir()):
                return candidate
    raise FileExistsError(f"{folder} and 9,999 others like it exist")


def first_name(line: str) -> str:
    """A class line's first name, as the engine reads it (empty synonyms — ", roof" — are no names)."""
    return next((name.strip() for name in line.split(",") if name.strip()), line.strip())


def class_title(classes: list[str], limit: int = MAX_TITLE) -> str:
    """"building, road, tree +2": the first name of each class, whole names only, the rest counted."""
    names = [first_name(line) for line in classes]
    shown: list[str] = []
    for name in names:
        if shown and len(", ".join(shown + [name])) > limit:
            break
        shown.append(name)
    rest = len(names) - len(shown)
    return ", ".join(shown) + (f" +{rest}" if rest else "")


def run_title(raster: str, classes: list[str], when: float | None = None) -> str:
    """The group name of a run: "ortho — building, road, tree (14:05:31)"."""
    return f"{raster} — {class_title(classes)} ({time.strftime('%H:%M:%S', time.localtime(when))})"


def safe_name(text: str, limit: int = 40) -> str:
    """`text` as a part of a file name: letters of any script and digits ("forêt", "建筑": a folder of
    Chinese class names is not "x_x-x"), '-' for anything else (no separator, no '_', no emoji)."""
    cleaned = re.sub(r"[\W_]+", "-", unicodedata.normalize("NFC", text)).strip("-")
    return cleaned[:limit].strip("-") or "x"


def run_folder_name(raster: str, classes: list[str], when: float | None = None) -> str:
    """A file-system-safe folder for one run: "ortho_building-road-tree_20261126-140531"."""
    first = "-".join(safe_name(first_name(line)) for line in classes[:3])
    return f"{safe_name(raster)}_{first}_{time.strftime('%Y%m%d-%H%M%S', time.localtime(when))}"


def done_message(title: str, summary: dict, raster: str | None = None) -> tuple[str, str]:
    """(message-bar level, text) for a finished run on the layer named `raster`: its first note — what the
    engine chose or noticed about the raster, or a setting unlike the taught classes' — in the panel's
    terms, as a warning; else plain "done"."""
    from qgis_farslip.client import in_panel_terms

    notes = summary.get("notes") or []
    if not notes:
        return "info", f"{title}: done"
    more = f" (and {len(notes) - 1} more in the summary)" if len(notes) > 1 else ""
    return "warning", f"{title}: done — {in_panel_terms(notes[0], raster)}{more}"
