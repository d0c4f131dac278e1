"""Build the installable plugin zip from this package and the repository's `metadata.txt`.

    python3 -m qgis_farslip.packaging            # → dist/qgis_farslip-<version>.zip

The zip holds one folder, `qgis_farslip/`, with the plugin's modules, `metadata.txt` (copied from
the repository root, its single source), the licence and `engine_wheel/farslip-<version>-py3-none-any.whl`:
the engine package itself (pure Python, under 1 MB; its dependencies, torch included, come from the
package index when the plugin's Engine → Set up… installs it). `--no-engine` leaves the wheel out.
Tests, caches and this builder are left out.
"""

from __future__ import annotations

import argparse
import base64
import configparser
import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent
EXCLUDE_DIRS = {"__pycache__", ".pytest_cache"}
EXCLUDE_FILES = {"packaging.py"}


def metadata_version(path: Path = ROOT / "metadata.txt") -> str:
    meta = configparser.ConfigParser()
    meta.read(path, encoding="utf-8")
    return meta["general"]["version"]


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}\n"


def engine_wheel(out_dir: Path, root: Path = ROOT) -> Path:
    """A wheel of the engine (the `engine*` and `training*` packages, dependencies and commands as
    pyproject.toml declares them), written without a build backend: no network, no setuptools."""
    import tomllib

    project = tomllib.loads((root / "pyproject.toml").read_text("utf-8"))["project"]
    name, version = project["name"], project["version"]
    info = f"{name}-{version}.dist-info"
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", f"Summary: {project['description']}",
            f"Requires-Python: {project['requires-python']}", f"License: {project.get('license', '')}"]
    meta += [f"Requires-Dist: {dep}" for dep in project["dependencies"]]
    for extra, deps in project.get("optional-dependencies", {}).items():
        meta.append(f"Provides-Extra: {extra}")
        meta += [f'Requires-Dist: {dep}; extra == "{extra}"' for dep in deps]
    points = ["[console_scripts]"] + [f"{k} = {v}" for k, v in project.get("scripts", {}).items()]
    for group, entries in project.get("entry-points", {}).items():
        points += ["", f"[{group}]"] + [f"{k} = {v}" for k, v in entries.items()]
    files: dict[str, bytes] = {}
    for package in ("engine", "training"):
        for folder, dirs, names in os.walk(root / package):
            dirs[:] = sorted(d for d in dirs if d not in EXCLUDE_DIRS)
            for file in sorted(names):
                if not file.endswith((".pyc", ".pyo")):
                    path = Path(folder) / file
                    files[path.relative_to(root).as_posix()] = path.read_bytes()
    files[f"{info}/METADATA"] = ("\n".join(meta) + "\n").encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: qgis_farslip.packaging\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files[f"{info}/entry_points.txt"] = ("\n".join(points) + "\n").encode()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        record = ""
        for file, data in files.items():
            zf.writestr(file, data)
            record += _record_line(file, data)
        zf.writestr(f"{info}/RECORD", record + f"{info}/RECORD,,\n")
    return target


def build(out_dir: Path, with_engine: bool = True) -> Path:
    """The plugin zip in `out_dir` (nothing else is left there: the engine wheel is made in a temporary
    folder, and a build that fails leaves no partial zip)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"qgis_farslip-{metadata_version()}.zip"
    partial = target.with_name(f".{target.name}.partial")
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf, \
                tempfile.TemporaryDirectory(prefix="farslip-wheel-") as wheel_dir:
            for folder, dirs, files in os.walk(PACKAGE):
                dirs[:] = sorted(d for d in dirs if d not in EXCLUDE_DIRS)
                for name in sorted(files):
                    if name in EXCLUDE_FILES or name.endswith((".pyc", ".pyo")):
                        continue
                    path = Path(folder) / name
                    zf.write(path, Path("qgis_farslip") / path.relative_to(PACKAGE))
            zf.write(ROOT / "metadata.txt", "qgis_farslip/metadata.txt")
            zf.write(ROOT / "LICENSE", "qgis_farslip/LICENSE")
            if with_engine:
                wheel = engine_wheel(Path(wheel_dir))
                zf.write(wheel, f"qgis_farslip/engine_wheel/{wheel.name}")
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "dist"), help="output folder (default: dist/)")
    parser.add_argument("--no-engine", action="store_true", help="leave the engine wheel out of the zip")
    args = parser.parse_args()
    print(build(Path(args.out), with_engine=not args.no_engine))


if __name__ == "__main__":
    main()
