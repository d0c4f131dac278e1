"""What a batch run has finished, kept on disk so that a rerun resumes.

State lives in `<out>/.farslip-batch/<fingerprint>/` (the fingerprint covers the model, prompts,
options and settings, so a run with other settings never reuses these results):
- `manifest.jsonl`: one line per finished block (`{"input", "block", "windows"}`) and per
  published input (`{"input", "published": true}`), appended after the data it records is on disk;
- `parts/<input>/<i>_<j>.npz`: the block's contributions (crop-row strips per target block, see
  `engine.batch.units.NumpyPart`),
  written under a temporary name and renamed, removed once that input's outputs are published.
A finished input is one whose summary JSON (written last by `segment`'s publishing) exists and whose
outputs these settings made from the file as it is now: `<out>/.farslip-batch/outputs/<input>` names the
fingerprint of the run that published the outputs now in the folder and the input's stamp (size,
modification time) then; `inputs/<input>` the stamp its saved blocks were computed from (a changed file's
blocks are forgotten). It is removed before a run with other settings
replaces them and written after, so a rerun with other classes or options always recomputes, and
"done earlier" means "done earlier with exactly these settings".
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from engine.boxes import Box
from engine.batch.units import NumpyPart

STATE_DIR = ".farslip-batch"


def fingerprint(settings: dict) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Manifest:
    """Finished blocks and inputs of one run configuration in one output folder."""

    def __init__(self, out_dir: Path, settings: dict):
        self.fingerprint = fingerprint(settings)
        self.root = Path(out_dir) / STATE_DIR / self.fingerprint
        self.owners = Path(out_dir) / STATE_DIR / "outputs"
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "settings.json").write_text(json.dumps(settings, indent=2, default=str), encoding="utf-8")
        self.path = self.root / "manifest.jsonl"
        self._blocks: dict[str, dict[tuple[int, int], int]] = {}
        self._stamps: dict[str, str] = {}
        self.published: set[str] = set()
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a crash
                    continue
                if entry.get("published"):
                    self.published.add(entry["input"])
                elif self._parts_path(entry["input"], *entry["block"]).exists():
                    self._blocks.setdefault(entry["input"], {})[tuple(entry["block"])] = entry["windows"]

    def track(self, name: str, stamp: str) -> None:
        """The input `name` as it is now (`inputs.input_stamp`): blocks saved from another version of its file
        are forgotten, and only outputs made from this version count as made (`made_outputs`)."""
        self._stamps[name] = stamp
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
        """What `outputs/<name>` holds for outputs this run makes: its fingerprint and the input's stamp."""
        stamp = self._stamps.get(name, "")
        return f"{self.fingerprint} {stamp}" if stamp else self.fingerprint

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
        np.savez(partial, **arrays)
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
        (self.owners / name).unlink(missing_ok=True)

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
