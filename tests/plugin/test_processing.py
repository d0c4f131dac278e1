"""The "Segment raster by text prompts" Processing algorithm against a real engine process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


sys.path.append("/usr/share/qgis/python/plugins")  # QGIS's own Processing framework


@pytest.fixture
def use_engine(engine):
    from qgis_farslip.settings import save_engine_settings

    save_engine_settings(engine.url, engine.token)
    return engine


def _params(folder: Path, layer, out: Path, **extra):
    return {"INPUT": layer, "CLASSES": "water, river\ngrass\nbuilding, roof; road", "OUTPUT_FOLDER": str(out), **extra}


def _loaded(prefix: str) -> list:
    from qgis.core import QgsProject

    return [lyr for lyr in QgsProject.instance().mapLayers().values() if lyr.name().startswith(prefix)]


def test_algorithm_segments_and_loads_styled_layers(qgis_app, processing, use_engine, folder, tmp_path):
    from qgis.core import QgsProject, QgsRasterLayer

    QgsProject.instance().clear()
    layer = QgsRasterLayer(str(folder / "small.tif"), "small")
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    result = processing.runAndLoadResults("farslip:segment", _params(folder, layer, tmp_path, SCORES=True))
    classes_path = Path(result["CLASSES_RASTER"])
    assert classes_path.exists() and Path(result["POLYGONS"]).exists()
    assert classes_path.parent.name.startswith("small_water-grass-building_")
    [raster] = _loaded("Classes · small — water, grass, building, road (")
    assert raster.renderer().type() == "paletted"
    legend = [c.label for c in raster.renderer().classes()]
    assert legend == ["water", "grass", "building", "road"]
    assert raster.renderer().classes()[0].color.name() == "#1e64dc"  # water's colour
    assert raster.crs() == layer.crs() and raster.extent() == layer.extent()
    [polygons] = _loaded("Polygons · small — ")
    assert polygons.renderer().type() == "categorizedSymbol"
    colours = {cat.value(): cat.symbol().color().name() for cat in polygons.renderer().categories()}
    assert colours["water"] == "#1e64dc" and set(colours) == set(legend)
    assert polygons.featureCount() > 0
    [scores] = _loaded("Score: water · small")  # scores are loaded too, the first class's band on a ramp
    assert scores.renderer().type() == "singlebandpseudocolor" and scores.renderer().band() == 1


def test_extent_limits_the_area(qgis_app, processing, use_engine, folder, tmp_path):
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(str(folder / "small.tif"), "small")
    e = layer.extent()
    extent = f"{e.xMinimum()},{e.xMinimum() + 50},{e.yMinimum()},{e.yMinimum() + 40} [{layer.crs().authid()}]"
    result = processing.run("farslip:segment", _params(folder, layer, tmp_path, EXTENT=extent))
    out = QgsRasterLayer(result["CLASSES_RASTER"], "part")
    assert out.width() == 100 and out.height() == 80


def test_engine_down_gives_a_readable_error(qgis_app, processing, folder, tmp_path):
    from qgis.core import QgsProcessingException, QgsRasterLayer

    from qgis_farslip.settings import save_engine_settings

    save_engine_settings("http://127.0.0.1:9", "x")
    layer = QgsRasterLayer(str(folder / "small.tif"), "small")
    with pytest.raises(QgsProcessingException, match="not answering at http://127.0.0.1:9"):
        processing.run("farslip:segment", _params(folder, layer, tmp_path))


def test_cancel_stops_the_engine_job(qgis_app, processing, use_engine, folder, tmp_path):
    from qgis.core import QgsProcessingException, QgsProcessingFeedback, QgsRasterLayer

    class CancelWhenStarted(QgsProcessingFeedback):
        def setProgress(self, progress):  # noqa: N802
            super().setProgress(progress)
            if progress > 0:
                self.cancel()

    layer = QgsRasterLayer(str(folder / "large.tif"), "large")
    with pytest.raises(QgsProcessingException, match="cancelled"):
        processing.run("farslip:segment", _params(folder, layer, tmp_path), feedback=CancelWhenStarted())
    assert use_engine.jobs()[0]["state"] == "cancelled"


def test_grid_search_and_label_algorithms_load_styled_layers(qgis_app, processing, use_engine, folder, tmp_path):
    from qgis.core import QgsProject, QgsRasterLayer, QgsVectorLayer

    QgsProject.instance().clear()
    layer = QgsRasterLayer(str(folder / "small.tif"), "small")
    grid = processing.runAndLoadResults("farslip:classify_grid", {"INPUT": layer, "CLASSES": "water\ngrass",
                                                                  "CELL": 40.0, "OUTPUT_FOLDER": str(tmp_path)})
    cells = QgsVectorLayer(grid["GRID"], "grid")
    assert cells.featureCount() == 4 * 3 - 0 and {f["class"] for f in cells.getFeatures()} <= {"water", "grass"}
    [loaded_grid] = _loaded("Scene grid · small")
    assert loaded_grid.renderer().type() == "categorizedSymbol"
    assert [c.value() for c in loaded_grid.renderer().categories()] == ["water", "grass"]
    found = processing.runAndLoadResults("farslip:search", {"INPUT": layer, "QUERY": "a lake", "TOP_K": 2,
                                                            "OUTPUT_FOLDER": str(tmp_path)})
    assert QgsRasterLayer(found["HEATMAP"], "h").crs() == layer.crs()
    assert 1 <= QgsVectorLayer(found["BOXES"], "b").featureCount() <= 2
    [heat] = _loaded("Heat map · “a lake”")
    assert heat.renderer().type() == "singlebandpseudocolor"
    [boxes] = _loaded("Search boxes · “a lake”")
    assert boxes.renderer().symbol().symbolLayer(0).properties()["style"] == "no"  # outlines over the image
    labelled = processing.runAndLoadResults("farslip:label_regions", {"INPUT": layer, "REGIONS": cells,
                                                                      "CLASSES": "water\ngrass", "OUTPUT": "TEMPORARY_OUTPUT"})
    out = QgsProject.instance().mapLayer(labelled["OUTPUT"])
    assert out.featureCount() == cells.featureCount()
    assert all(f["farslip_class"] in ("water", "grass") and 0 < f["farslip_score"] <= 1 for f in out.getFeatures())
    assert out.renderer().type() == "categorizedSymbol" and out.renderer().classAttribute() == "farslip_class"
    # a class list of separators only: the dock's one line, before any job, in every algorithm
    from qgis.core import QgsProcessingException

    for algorithm, params in (("farslip:classify_grid", {"CELL": 40.0, "OUTPUT_FOLDER": str(tmp_path)}),
                              ("farslip:label_regions", {"REGIONS": cells, "OUTPUT": "TEMPORARY_OUTPUT"}),
                              ("farslip:segment", {"OUTPUT_FOLDER": str(tmp_path)})):
        with pytest.raises(QgsProcessingException, match="^type at least one class$"):
            processing.run(algorithm, {"INPUT": layer, "CLASSES": " ; ;\n ", **params})


def test_engine_url_and_token_from_an_auth_config(qgis_app, processing, engine, folder, tmp_path):
    from qgis.core import QgsRasterLayer

    from qgis_farslip.auth import store_token
    from qgis_farslip.settings import save_engine_settings

    save_engine_settings("http://127.0.0.1:9", "")  # the plugin's own settings point nowhere
    authcfg = store_token(engine.token, engine.url)
    layer = QgsRasterLayer(str(folder / "small.tif"), "small")
    result = processing.run("farslip:segment", _params(folder, layer, tmp_path, ENGINE_URL=engine.url,
                                                       ENGINE_AUTH=authcfg))
    assert Path(result["CLASSES_RASTER"]).exists()
    from qgis.core import QgsProcessingException

    wrong = store_token("not-the-token", engine.url)
    with pytest.raises(QgsProcessingException, match="refused the token"):
        processing.run("farslip:segment", _params(folder, layer, tmp_path, ENGINE_URL=engine.url, ENGINE_AUTH=wrong))


def test_teach_segment_with_the_taught_classes_and_check_accuracy(qgis_app, processing, use_engine, folder, tmp_path):
    import json
    import re

    from qgis.core import QgsProcessingException, QgsProject, QgsRasterLayer

    from tests.plugin.label_polygons import LABELS, REFERENCE, memory_layer

    layer = QgsRasterLayer(str(folder / "small.tif"), "small")
    labels, reference = memory_layer("labels", LABELS), memory_layer("reference", REFERENCE, "truth")
    QgsProject.instance().addMapLayers([labels, reference])
    taught = processing.run("farslip:teach_classes", {
        "INPUT": layer, "CLASSES": "water\ngrass\nroof, building\nroad", "LABELS": labels, "FIELD": "class",
        "OUTPUT": str(tmp_path / "site")})
    assert taught["OUTPUT"] == str(tmp_path / "site.classes.json")
    made = json.loads(Path(taught["OUTPUT"]).read_text())
    assert {"alpha", "model"} <= set(made) and re.fullmatch(r"[0-9a-f]{32}", taught["JOB_ID"])
    assert 0.0 <= taught["ALPHA"] <= 1.0
    from qgis_farslip.taught_files import remembered

    assert remembered()[0] == str(Path(taught["OUTPUT"]).resolve())  # listed beside Taught in the dock later
    # the file, outside the folders this engine reads: sent to it (as to an engine on another computer)
    by_file = processing.runAndLoadResults("farslip:segment", {"INPUT": layer, "CLASSES": f"@{taught['OUTPUT']}",
                                                               "OUTPUT_FOLDER": str(tmp_path)})
    assert Path(by_file["CLASSES_RASTER"]).exists()
    assert _loaded("Classes · small — water, grass, roof, road (")  # named after the file's classes
    names = ["water", "grass", "roof", "road"]
    grid = processing.runAndLoadResults("farslip:classify_grid", {"INPUT": layer, "CLASSES": f"@{taught['OUTPUT']}",
                                                                  "CELL": 40.0, "OUTPUT_FOLDER": str(tmp_path)})
    [loaded_grid] = [lyr for lyr in _loaded("Scene grid · small") if lyr.source().split("|")[0] == grid["GRID"]]
    assert [c.value() for c in loaded_grid.renderer().categories()] == names  # the taught classes
    labelled = processing.runAndLoadResults("farslip:label_regions", {
        "INPUT": layer, "REGIONS": grid["GRID"], "CLASSES": f"@{taught['OUTPUT']}", "OUTPUT": "TEMPORARY_OUTPUT"})
    out = QgsProject.instance().mapLayer(labelled["OUTPUT"])
    assert {f["farslip_class"] for f in out.getFeatures()} <= set(names)
    assert [c.value() for c in out.renderer().categories()] == names
    notes = tmp_path / "notes.classes.json"
    notes.write_text("{}")
    with pytest.raises(QgsProcessingException, match="^notes.classes.json is not a taught-classes file: choose one"):
        processing.run("farslip:classify_grid", {"INPUT": layer, "CLASSES": f"@{notes}", "CELL": 40.0,
                                                 "OUTPUT_FOLDER": str(tmp_path)})
    segmented = processing.run("farslip:segment", {"INPUT": layer, "CLASSES": f"@job:{taught['JOB_ID']}",
                                                   "OUTPUT_FOLDER": str(tmp_path)})
    assert Path(segmented["CLASSES_RASTER"]).exists() and re.fullmatch(r"[0-9a-f]{32}", segmented["JOB_ID"])
    checked = processing.run("farslip:check_accuracy", {"JOB": segmented["JOB_ID"], "REFERENCE": reference,
                                                        "FIELD": "truth", "OUTPUT_FOLDER": str(tmp_path / "acc")})
    for key, name in (("ACCURACY_JSON", "accuracy.json"), ("CONFUSION_CSV", "confusion.csv"),
                      ("CONFUSION_PNG", "confusion.png")):
        assert checked[key] == str(tmp_path / "acc" / name) and Path(checked[key]).stat().st_size > 0
    report = json.loads(Path(checked["ACCURACY_JSON"]).read_text())
    assert checked["MIOU"] == report["miou"] and set(report["per_class"]) <= {"water", "grass", "roof", "road"}
    with pytest.raises(QgsProcessingException, match="no longer has the taught classes"):
        processing.run("farslip:segment", {"INPUT": layer, "CLASSES": "@job:" + "f" * 32,
                                           "OUTPUT_FOLDER": str(tmp_path)})


def test_an_engine_too_old_to_receive_taught_classes_is_said_in_one_line(qgis_app, processing, folder, tmp_path):
    """An engine from before POST /v1/classes: a stand-in answering 404 "Not Found" to every POST, as the
    engine's web framework does for a route it lacks (the plugin, not the engine, is under test here)."""
    import json
    from http.server import BaseHTTPRequestHandler

    from qgis.core import QgsProcessingException, QgsRasterLayer

    from tests.plugin.older_engine import reply, serving

    class OlderEngine(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            reply(self, 404, {"detail": "Not Found"})

        def log_message(self, *args):
            pass

    site = tmp_path / "site.classes.json"
    site.write_text(json.dumps({"format": "farslip-taught-classes/1", "classes": ["water", "grass"], "alpha": 0.5,
                                "model": {"name": "tiny.pt", "arch": "tiny-vit-16"}, "made": {"polygons": {"water": 1}},
                                "prototypes": {"water": [1.0, 0.0]}}))
    with serving(OlderEngine) as url, pytest.raises(QgsProcessingException) as raised:
        processing.run("farslip:classify_grid", {
            "INPUT": QgsRasterLayer(str(folder / "small.tif"), "small"), "CLASSES": f"@{site}", "CELL": 40.0,
            "OUTPUT_FOLDER": str(tmp_path), "ENGINE_URL": url})
    assert str(raised.value) == ("this engine cannot receive site.classes.json (an older version): update the "
                                 "engine, or teach the classes again with it (Labels tab → Teach from labels)")


def test_bands_and_nodata_make_a_grey_raster_with_a_frame_usable(qgis_app, processing, use_engine, folder, tmp_path):
    """A one-band raster with an undeclared black frame: refused without bands (the engine's message);
    with its band as red, green and blue it runs and the frame note reaches the log; with no-data 0
    the frame gets no class."""
    import numpy as np
    from osgeo import gdal
    from qgis.core import QgsProcessingException, QgsProcessingFeedback, QgsRasterLayer

    path = str(folder / "grey_processing.tif")
    data = np.random.default_rng(1).integers(1, 256, (160, 160), dtype=np.uint8)
    data[:16], data[-16:], data[:, :16], data[:, -16:] = 0, 0, 0, 0
    ds = gdal.GetDriverByName("GTiff").Create(path, 160, 160, 1, gdal.GDT_Byte)
    ds.SetGeoTransform((500000.0, 0.5, 0.0, 5200000.0, 0.0, -0.5))
    ds.GetRasterBand(1).WriteArray(data)
    ds = None
    layer = QgsRasterLayer(path, "grey")
    with pytest.raises(QgsProcessingException, match=r"choose the Bands \(this algorithm's parameter\) \(e\.g\. 1, 1, 1"):
        processing.run("farslip:segment", _params(folder, layer, tmp_path / "a"))

    class Log(QgsProcessingFeedback):
        warnings: list = []

        def pushWarning(self, text):  # noqa: N802
            self.warnings.append(text)

    log = Log()
    result = processing.run("farslip:segment", _params(folder, layer, tmp_path / "b", BANDS=[1, 1, 1]), feedback=log)
    assert any("edge frame of value 0" in w and "set No data to 0 (this algorithm's parameter)" in w
               for w in log.warnings), log.warnings
    result = processing.run("farslip:segment", _params(folder, layer, tmp_path / "c", BANDS=[1, 1, 1], NODATA=0))
    classes = QgsRasterLayer(result["CLASSES_RASTER"], "classes")
    block = classes.dataProvider().block(1, classes.extent(), 160, 160)
    assert block.value(3, 3) == 255 and block.value(80, 80) != 255
