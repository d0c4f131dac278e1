"""The Processing algorithms from the command line (`qgis_process`) and inside a graphical model."""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest


# Debian's /usr/bin/qgis_process wrapper adds the desktop's QGIS_OPTS (--noversioncheck), which
# qgis_process rejects; the binary itself works.
QGIS_PROCESS = shutil.which("qgis_process.bin") or shutil.which("qgis_process")


@pytest.mark.skipif(QGIS_PROCESS is None, reason="needs qgis_process (apt package qgis)")
def test_qgis_process_runs_the_segment_algorithm(engine, folder, tmp_path):
    from qgis_farslip.packaging import build

    profiles = tmp_path / "profiles"
    plugins = profiles / "profiles" / "default" / "python" / "plugins"
    with zipfile.ZipFile(build(tmp_path / "dist")) as zf:
        zf.extractall(plugins)
    settings = profiles / "profiles" / "default" / "QGIS"
    settings.mkdir(parents=True)
    (settings / "QGIS3.ini").write_text(f"[PythonPlugins]\nqgis_farslip=true\n[farslip]\nengine_url={engine.url}\n"
                                        f"token={engine.token}\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "QT_QPA_PLATFORM": "offscreen"}
    cmd = [QGIS_PROCESS, "--json", "run", "farslip:segment", f"--INPUT={folder / 'small.tif'}",
           "--CLASSES=water;grass;building,roof", f"--OUTPUT_FOLDER={tmp_path / 'out'}"]
    out = subprocess.run(cmd, env={**env, "QGIS_CUSTOM_CONFIG_PATH": str(profiles)}, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    results = json.loads(out.stdout[out.stdout.index("{"):])["results"]
    assert Path(results["CLASSES_RASTER"]).exists() and Path(results["POLYGONS"]).exists()


def test_the_algorithm_works_inside_a_graphical_model(qgis_app, engine, folder, tmp_path):
    import sys

    sys.path.append("/usr/share/qgis/python/plugins")
    from processing.core.Processing import Processing
    from qgis.core import (QgsProcessingContext, QgsProcessingFeedback, QgsProcessingModelAlgorithm,
                           QgsProcessingModelChildAlgorithm, QgsProcessingModelChildParameterSource,
                           QgsProcessingModelOutput, QgsProcessingModelParameter, QgsProcessingParameterRasterLayer)

    from qgis_farslip.plugin import FarSLIPPlugin
    from qgis_farslip.settings import save_engine_settings

    Processing.initialize()
    plugin = FarSLIPPlugin(iface=None)
    plugin.initProcessing()
    save_engine_settings(engine.url, engine.token)
    model = QgsProcessingModelAlgorithm("farslip model", "tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("image", "Image"), QgsProcessingModelParameter("image"))
    child = QgsProcessingModelChildAlgorithm("farslip:segment")
    child.setChildId("segment")
    child.addParameterSources("INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("image")])
    child.addParameterSources("CLASSES", [QgsProcessingModelChildParameterSource.fromStaticValue("water\ngrass")])
    child.addParameterSources("OUTPUT_FOLDER", [QgsProcessingModelChildParameterSource.fromStaticValue(str(tmp_path))])
    output = QgsProcessingModelOutput("classes", "classes")
    output.setChildOutputName("CLASSES_RASTER")
    child.setModelOutputs({"classes": output})
    model.addChildAlgorithm(child)
    results, ok = model.run({"image": str(folder / "small.tif")}, QgsProcessingContext(), QgsProcessingFeedback())
    plugin.unload()
    assert ok
    # QGIS 3.22 also lists the child's output as the model's; 3.40 under the child's results only
    values = [*results.values(), *results.get("CHILD_RESULTS", {}).get("segment", {}).values()]
    assert any(Path(str(v)).exists() for v in values if str(v).endswith(".tif"))
