"""What a batch run has finished, kept on disk so that a rerun resumes.

State lives in `<out>/.farslip-batch/<fingerprint>/` (the fingerprint covers the model, prompts,
options and settings, so a run with other settings never reuses these results):
- `manifest.jsonl`: one line per finished block (`{"input", "block", "windows"}`) and per
  published input (`{"input", "published": true}`), appended after the data it records is on disk;
- `parts/<input>/<i>_<j>.npz`: the block's contributions (crop-row strips per target block, see
  `engine.batch.units.NumpyPart`),
  written under a temporary name and renamed, removed once that input's outputs are published.
A finished input is one whose summary JSON (written last by `segment`'s publishing) exists and whose
outputs these settings made from this very file as it is now: `<out>/.farslip-batch/outputs/<input>`
names (JSON) the fingerprint of the run that published the outputs now in the folder, the input file
(`inputs.source_key`: another folder's tile.tif is another input, given its own output names) and its
stamp (size, modification time) then; `inputs/<input>` the stamp its saved blocks were computed from (a
changed file's blocks are forgotten). It is removed before a run with other settings
replaces them and written after, so a rerun with other classes or options always recomputes, and
"done earlier" means "done earlier with exactly these settings".

What a crash or a hand leaves wrong is not trusted: a manifest line that is not a finished block or a
published input is skipped, a saved block that does not read back whole is forgotten (computed again),
and a block's file reaches the disk (fsync) before the manifest line that records it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from engine.boxes import Box
from engine.errors import InputError
from engine.batch.units import NumpyPart

STATE_DIR = ".farslip-batch"


def fingerprint(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def output_sources(out_dir: Path) -> dict[str, str]:
    """{output stem: the input file (`inputs.source_key`) whose outputs the folder holds under it}, from
    what earlier batch runs recorded (`outputs/<stem>`)."""
    found = {}
    folder = Path(out_dir) / STATE_DIR / "outputs"
    for path in folder.iterdir() if folder.is_dir() else ():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(record, dict) and isinstance(record.get("input"), str) and not path.name.startswith("."):
                found[path.name] = record["input"]
        except (OSError, ValueError):  # (an older run's record, a folder, a file cut short: no claim)
            continue
    return found


def check_state_folder(out_dir: Path) -> None:
    """An InputError when the batch state folder's name is taken by a file."""
    state = Path(out_dir) / STATE_DIR
    if state.exists() and not state.is_dir():
        raise InputError(f"{state} is a file: a batch run keeps what it has finished in a folder of that name; "
                         f"move the file aside")


def _block_entry(entry) -> tuple[str, tuple[int, int], int] | None:
    """(input, block, windows) of a manifest line recording a finished block, else None."""
    if not isinstance(entry, dict) or not isinstance(entry.get("input"), str):
        return None
    block, windows = entry.get("block"), entry.get("windows")
    if (isinstance(block, list) and len(block) == 2 and all(type(v) is int and v >= 0 for v in block)
            and type(windows) is int and windows >= 0):
        return entry["input"], (block[0], block[1]), windows
    return None


class Manifest:
    """Finished blocks and inputs of one run configuration in one output folder."""

    def __init__(self, out_dir: Path, settings: dict):
        check_state_folder(out_dir)
        self.fingerprint = fingerprint(settings)
        self.root = Path(out_dir) / STATE_DIR / self.fingerprint
        self.owners = Path(out_dir) / STATE_DIR / "outputs"
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "settings.json").write_text(json.dumps(settings, indent=2, default=str), encoding="utf-8")
        self.path = self.root / "manifest.jsonl"
        self._blocks: dict[str, dict[tuple[int, int], int]] = {}
        self._stamps: dict[str, str] = {}
        self._sources: dict[str, str] = {}
        self.published: set[str] = set()
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a crash, or edited
                    continue
                if isinstance(entry, dict) and entry.get("published") is True and isinstance(entry.get("input"), str):
                    self.published.add(entry["input"])
                elif (block := _block_entry(entry)) is not None and self._readable(*block[:2]):
                    name, (i, j), windows = block
                    self._blocks.setdefault(name, {})[(i, j)] = windows

    def _readable(self, name: str, block: tuple[int, int]) -> bool:
        """Whether a saved block's file reads back whole (a crash before it reached the disk, or a hand,
        can leave it empty, cut short or another file)."""
        path = self._parts_path(name, *block)
        try:  # (its zip directory, written last, read: an empty, cut-off or foreign file has none)
            with np.load(path) as data:
                return bool(data.files)
        except Exception:  # noqa: BLE001 - np.load fails on bad files in many ways (BadZipFile, EOFError, ...)
            return False

    def track(self, name: str, stamp: str, source: str = "") -> None:
        """The input `name` as it is now (`inputs.input_stamp`) and which file it is (`inputs.source_key`):
        blocks saved from another version of its file are forgotten, and only outputs made from this file
        as it is now count as made (`made_outputs`)."""
        self._stamps[name] = stamp
        self._sources[name] = source
        path = self.root / "inputs" / name
        try:
            before = path.read_text(encoding="utf-8")
        except OSError:
            before = None
        if before == stamp:
            return
        self._blocks.pop(name, None)
        shutil.rmtree(self.root / "parts" / name, ignore_errors=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{name}.partial")
        partial.write_text(stamp, encoding="utf-8")
        os.replace(partial, path)

    def _owner(self, name: str) -> str:
        """What `outputs/<name>` holds for outputs this run makes: its fingerprint, the input file and its
        stamp."""
        return json.dumps({"settings": self.fingerprint, "input": self._sources.get(name, ""),
                           "stamp": self._stamps.get(name, "")}, sort_keys=True)

    def _parts_path(self, name: str, i: int, j: int) -> Path:
        return self.root / "parts" / name / f"{i}_{j}.npz"

    def done_blocks(self, name: str) -> dict[tuple[int, int], int]:
        """Finished blocks of an input → windows each computed."""
        return self._blocks.get(name, {})

    def save_block(self, name: str, i: int, j: int, parts: list[NumpyPart], windows: int) -> None:
        path = self._parts_path(name, i, j)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for (ti, tj), box, shape, tops, sums, cover in parts:
            arrays[f"{ti}_{tj}_box"] = np.array([box.y, box.x, box.h, box.w])
            arrays[f"{ti}_{tj}_shape"] = np.array(shape)
            arrays[f"{ti}_{tj}_tops"] = tops
            arrays[f"{ti}_{tj}_sums"] = sums
            arrays[f"{ti}_{tj}_cover"] = cover
        partial = path.with_name(f".{path.stem}.partial.npz")
        with open(partial, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())  # (on the disk before the manifest line that records it)
        os.replace(partial, path)
        self._append({"input": name, "block": [i, j], "windows": windows})
        self._blocks.setdefault(name, {})[(i, j)] = windows

    def load_part(self, name: str, source: tuple[int, int], target: tuple[int, int]):
        """(rectangle, strip shape, crop-row tops, strip sums, coverage) that block `source` contributed
        to block `target` (see `NumpyPart`), or None."""
        if source not in self.done_blocks(name):
            return None
        key = f"{target[0]}_{target[1]}"
        with np.load(self._parts_path(name, *source)) as data:
            if f"{key}_box" not in data:
                return None
            return (Box(*(int(v) for v in data[f"{key}_box"])), tuple(int(v) for v in data[f"{key}_shape"]),
                    data[f"{key}_tops"], data[f"{key}_sums"], data[f"{key}_cover"])

    def made_outputs(self, name: str) -> bool:
        """Whether the outputs of `name` in the folder were published by a run with these settings."""
        try:
            return (self.owners / name).read_text(encoding="utf-8").strip() == self._owner(name)
        except OSError:
            return False

    def disown(self, name: str) -> None:
        """Before outputs of `name` are replaced: no run's settings own them until published again."""
        record = self.owners / name
        if record.is_dir():  # (not ours to keep: a record is a file)
            shutil.rmtree(record)
        record.unlink(missing_ok=True)

    def mark_published(self, name: str) -> None:
        self._append({"input": name, "published": True})
        self.published.add(name)
        self.owners.mkdir(parents=True, exist_ok=True)
        partial = self.owners / f".{name}.partial"
        partial.write_text(self._owner(name), encoding="utf-8")
        os.replace(partial, self.owners / name)
        self._blocks.pop(name, None)
        shutil.rmtree(self.root / "parts" / name, ignore_errors=True)

    def _append(self, entry: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
