"""The plugin package is well-formed and stays free of engine-side libraries."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_metadata_has_what_qgis_needs():
    meta = configparser.ConfigParser()
    meta.read(ROOT / "metadata.txt", encoding="utf-8")
    general = meta["general"]
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author", "email", "homepage",
                "tracker", "repository", "icon"):
        assert general.get(key), key
    assert general["qgisMinimumVersion"] == "3.22"
    # QGIS 4's plugin manager lists a plugin only when its maximum version reaches 4 (3.99 hides it there)
    assert general["qgisMaximumVersion"] == "4.99" and general["supportsQt6"] == "True"
    assert (ROOT / "qgis_farslip" / general["icon"]).is_file()  # shipped in the zip's plugin folder
    for key in ("homepage", "tracker", "repository"):
        assert general[key].startswith("https://"), key


def test_plugin_loads_in_qgis_python_without_torch(qgis_app):
    code = ("import sys, qgis.core, qgis_farslip, qgis_farslip.plugin; "
            "bad = [m for m in ('torch', 'open_clip', 'rasterio', 'engine') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_plugin_object_starts_and_unloads(qgis_app):
    import qgis_farslip

    plugin = qgis_farslip.classFactory(iface=None)
    plugin.initGui()
    plugin.unload()
