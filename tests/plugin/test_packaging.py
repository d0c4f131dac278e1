"""The plugin zip builds from metadata.txt and installs into a fresh QGIS profile."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_zip_installs_into_a_fresh_profile_and_loads(tmp_path):
    from qgis_farslip.packaging import build, metadata_version

    archive = build(tmp_path / "dist")
    assert archive.name == f"qgis_farslip-{metadata_version()}.zip"
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        assert "qgis_farslip/metadata.txt" in names and "qgis_farslip/__init__.py" in names
        assert "qgis_farslip/processing_provider/segment.py" in names and "qgis_farslip/icon.png" in names
        assert not any("__pycache__" in n or n.endswith("packaging.py") for n in names)
        plugins = tmp_path / "profile" / "profiles" / "default" / "python" / "plugins"
        zf.extractall(plugins)
    # A separate QGIS Python, as QGIS would run it: only the profile's plugin folder on the path.
    code = f"""
import sys
from qgis.core import QgsApplication
app = QgsApplication([], False); app.initQgis()
import qgis.utils
qgis.utils.plugin_paths = [{str(plugins)!r}]
sys.path.insert(0, {str(plugins)!r})
qgis.utils.updateAvailablePlugins()
assert 'qgis_farslip' in qgis.utils.available_plugins, qgis.utils.available_plugins
assert qgis.utils.pluginMetadata('qgis_farslip', 'name') == 'FarSLIP Segmentation'
assert qgis.utils.loadPlugin('qgis_farslip')
assert qgis.utils.startPlugin('qgis_farslip')
assert QgsApplication.processingRegistry().algorithmById('farslip:segment') is not None
import qgis_farslip
assert qgis_farslip.__file__.startswith({str(plugins)!r}), qgis_farslip.__file__
assert not any(m in sys.modules for m in ('torch', 'rasterio', 'engine'))
print('loaded', qgis_farslip.__file__)
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert "loaded" in out.stdout
