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
    assert [p.name for p in (tmp_path / "dist").iterdir()] == [archive.name]  # nothing else left there
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


def test_the_zip_ships_the_engine_wheel_that_the_setup_installs(tmp_path):
    from qgis_farslip.packaging import build

    with zipfile.ZipFile(build(tmp_path / "dist")) as zf:
        wheels = [n for n in zf.namelist() if n.startswith("qgis_farslip/engine_wheel/")]
        assert wheels == ["qgis_farslip/engine_wheel/farslip-0.1.0-py3-none-any.whl"]
        zf.extractall(tmp_path / "plugins")
    wheel = tmp_path / "plugins" / wheels[0]
    assert wheel.stat().st_size < 2_000_000
    # the installed plugin (no source tree beside it) offers its own wheel as the package to install
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from qgis_farslip.engine_setup import default_source; "
            "print(default_source())")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "plugins")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == str(wheel), out.stderr
    # pip takes it (dependencies left out here: no network in tests) and makes the `farslip` command
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install",
                          "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    if "no such option: --python" in pip.stderr:  # pip < 22.3: install with the venv's own pip
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(env)], check=True, timeout=120)
        pip = subprocess.run([str(env / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index",
                              str(wheel)], capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert (env / "bin" / "farslip").exists()
    site = next((env / "lib").glob("python3*/site-packages"))
    assert (site / "engine" / "cli.py").exists() and (site / "training" / "evaluate" / "published.json").exists()
    metadata = next(site.glob("farslip-0.1.0.dist-info")) / "METADATA"
    assert "Requires-Dist: torch>=2.1" in metadata.read_text()
