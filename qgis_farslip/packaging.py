"""Build the installable plugin zip from this package and the repository's `metadata.txt`.

    python3 -m qgis_farslip.packaging            # → dist/qgis_farslip-<version>.zip

The zip holds one folder, `qgis_farslip/`, with the plugin's modules, `metadata.txt` (copied from
the repository root, its single source) and the licence: what QGIS's "Install from ZIP" expects.
Tests, caches and this builder are left out.
"""

from __future__ import annotations

import argparse
import configparser
import os
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


def build(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"qgis_farslip-{metadata_version()}.zip"
    partial = target.with_name(f".{target.name}.partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
        for folder, dirs, files in os.walk(PACKAGE):
            dirs[:] = sorted(d for d in dirs if d not in EXCLUDE_DIRS)
            for name in sorted(files):
                if name in EXCLUDE_FILES or name.endswith((".pyc", ".pyo")):
                    continue
                path = Path(folder) / name
                zf.write(path, Path("qgis_farslip") / path.relative_to(PACKAGE))
        zf.write(ROOT / "metadata.txt", "qgis_farslip/metadata.txt")
        zf.write(ROOT / "LICENSE", "qgis_farslip/LICENSE")
    os.replace(partial, target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "dist"), help="output folder (default: dist/)")
    print(build(Path(parser.parse_args().out)))


if __name__ == "__main__":
    main()
