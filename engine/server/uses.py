"""Which jobs and uploads of this engine a job's request uses: read from the paths in it.

A request names the files it reads by the paths the submit check resolved: an upload's file
(`uploads/<id>.tif`, `uploads/<id>.classes.json`), a finished job's result (`jobs/<id>/out/...`: an
accuracy job's class raster, the classes of `"@job:<id>"`). The store refuses to forget a job or an
upload a queued or running job uses (the API answers 409), and refuses to record a job whose inputs
were just forgotten.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.server.ids import is_id


@dataclass
class Uses:
    jobs: set[str] = field(default_factory=set)
    uploads: set[str] = field(default_factory=set)


def uses(request, jobs_dir: Path, uploads_dir: Path) -> Uses:
    """The jobs and uploads whose files `request` (a stored job request: JSON values) names."""
    found = Uses()
    folders = [(folder, kind) for base, kind in ((jobs_dir, "jobs"), (uploads_dir, "uploads"))
               for folder in {base, base.resolve()}]
    for text in _strings(request):
        if "/" not in text and "\\" not in text:
            continue
        path = Path(text[1:] if text.startswith("@") else text)  # "@/…/result.classes.json": taught classes
        for folder, kind in folders:
            if path.is_relative_to(folder) and path != folder:
                first = path.relative_to(folder).parts[0]
                if kind == "jobs" and is_id(first):
                    found.jobs.add(first)
                elif kind == "uploads" and is_id(first.split(".")[0]):
                    found.uploads.add(first.split(".")[0])
    return found


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)
