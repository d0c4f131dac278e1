"""What a GIS user does that the happy path does not: removing the raster while it is segmented, labelling
rasters in different CRSs, custom and missing CRSs, the plugin unloaded mid-run, a download cut short,
a token QGIS cannot store, Processing's "Label regions" on odd features and a web-style layer."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


def _groups():
    from qgis.core import QgsLayerTreeGroup, QgsProject

    return [n for n in QgsProject.instance().layerTreeRoot().children() if isinstance(n, QgsLayerTreeGroup)]


def _raster(path, epsg: int | None, origin=(500000.0, 5200040.0), pixel=0.5, wkt: str | None = None, size=80):
    """A small 3-band raster; `epsg` None and `wkt` None: no CRS at all."""
    import numpy as np
    from osgeo import gdal, osr

    ds = gdal.GetDriverByName("GTiff").Create(str(path), size, size, 3, gdal.GDT_Byte)
    ds.SetGeoTransform((origin[0], pixel, 0.0, origin[1], 0.0, -pixel))
    if epsg is not None or wkt is not None:
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(epsg) if epsg is not None else srs.ImportFromWkt(wkt)
        ds.SetProjection(srs.ExportToWkt())
    rng = np.random.default_rng(0)
    for band in range(3):
        ds.GetRasterBand(band + 1).WriteArray(rng.integers(0, 255, (size, size), dtype=np.uint8))
    ds = None
    return str(path)


def test_removing_the_raster_while_it_is_segmented_still_gives_the_result(dock, qtbot):
    from qgis.core import QgsProject

    layer = dock.layer_combo.currentLayer()
    dock.prompt_edit.setPlainText("water\ngrass")
    task = dock.run()
    assert task is not None
    QgsProject.instance().removeMapLayer(layer.id())  # the user removes it at once: the layer object is deleted
    qtbot.waitUntil(lambda: dock.run_button.isEnabled(), timeout=120_000)
    assert dock.last_error is None and task.error is None, task.error
    assert not dock.cancel_button.isEnabled()
    assert _groups()[0].name().startswith("small — water, grass (")


def test_labels_on_rasters_in_different_crss_land_where_they_were_drawn(dock, tmp_path):
    from qgis.core import QgsCoordinateReferenceSystem, QgsCoordinateTransform, QgsProject, QgsRasterLayer, QgsRectangle

    from qgis_farslip.jobs import SegmentationRequest
    from qgis_farslip.labelling import RegionLabeller
    from qgis_farslip.raster_snapshot import RasterSnapshot

    utm = dock.layer_combo.currentLayer()
    first = RegionLabeller(None, SegmentationRequest(raster=RasterSnapshot.of(utm), classes=["water"]))
    box = utm.extent()
    labels = first.accept(box, utm.crs(), "water", 0.9)
    assert labels.crs().authid() == "EPSG:32633"  # the first raster labelled gives the layer its CRS
    # a second raster in EPSG:4326, 15° E 47° N
    wgs84 = QgsRasterLayer(_raster(tmp_path / "wgs84.tif", 4326, origin=(15.0, 47.0), pixel=0.00001), "wgs84")
    second = RegionLabeller(None, SegmentationRequest(raster=RasterSnapshot.of(wgs84), classes=["tree"]))
    drawn = QgsRectangle(15.0001, 46.9995, 15.0005, 46.9999)
    second.accept(drawn, QgsCoordinateReferenceSystem("EPSG:4326"), "tree", 0.8)
    [tree] = [f for f in labels.getFeatures() if f["class"] == "tree"]
    centre = tree.geometry().centroid().asPoint()
    to_utm = QgsCoordinateTransform(QgsCoordinateReferenceSystem("EPSG:4326"), labels.crs(), QgsProject.instance())
    want = to_utm.transform(drawn.center())
    assert centre.x() == pytest.approx(want.x(), abs=1.0) and centre.y() == pytest.approx(want.y(), abs=1.0)


def test_a_custom_crs_is_sent_as_wkt_and_no_crs_is_not_sent(make_dock, qtbot, folder, tmp_path):
    from qgis.core import QgsProject, QgsRasterLayer, QgsRectangle

    from qgis_farslip.jobs import build_payload

    dock = make_dock()
    custom_wkt = ('PROJCS["my grid",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
                  'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],'
                  'PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",14.1],'
                  'PARAMETER["scale_factor",0.9996],'
                  'PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1],'
                  'AXIS["Easting",EAST],AXIS["Northing",NORTH]]')
    custom = QgsRasterLayer(_raster(folder / "custom.tif", None, wkt=custom_wkt), "custom")
    assert custom.crs().isValid() and not custom.crs().authid().startswith("EPSG")
    QgsProject.instance().addMapLayer(custom)
    dock.layer_combo.setLayer(custom)
    dock.canvas.setDestinationCrs(custom.crs())
    e = custom.extent()
    dock.canvas.setExtent(QgsRectangle(e.xMinimum(), e.yMinimum(), e.center().x(), e.center().y()))
    dock.scope_combo.setCurrentText("Visible map extent")
    dock.prompt_edit.setPlainText("water\ngrass")
    payload = build_payload(dock.client(), dock.build_request(), str(tmp_path))
    assert payload["bbox_crs"].startswith(("PROJCS", "PROJCRS")) and len(payload["bbox_crs"]) > 200
    dock.run()  # and the engine takes it
    qtbot.waitUntil(lambda: dock.run_button.isEnabled(), timeout=120_000)
    assert dock.last_error is None, dock.last_error
    # a raster without any CRS (pixel space): no bbox_crs, the bbox is in the raster's own frame
    bare = QgsRasterLayer(_raster(folder / "bare.tif", None), "bare")
    QgsProject.instance().addMapLayer(bare)
    dock.layer_combo.setLayer(bare)
    dock.canvas.setDestinationCrs(bare.crs())
    b = bare.extent()
    dock.canvas.setExtent(QgsRectangle(b.xMinimum(), b.yMinimum(), b.center().x(), b.center().y()))
    payload = build_payload(dock.client(), dock.build_request(), str(tmp_path))
    assert "bbox" in payload and "bbox_crs" not in payload
    dock.run()
    qtbot.waitUntil(lambda: dock.run_button.isEnabled(), timeout=120_000)
    assert dock.last_error is None, dock.last_error


def test_shutting_the_dock_down_mid_run_cancels_it_and_adds_nothing(make_dock, qtbot):
    from qgis.core import QgsApplication, QgsProject

    dock = make_dock()
    dock.prompt_edit.setPlainText("water\ngrass")
    task = dock.run()
    before = len(QgsProject.instance().layerTreeRoot().children())
    qtbot.waitUntil(lambda: task.status() == task.TaskStatus.Running, timeout=30_000)
    dock.shut_down()  # the plugin unloads: the widgets are deleted next
    shown = dock.progress.text()
    qtbot.waitUntil(lambda: QgsApplication.taskManager().countActiveTasks() == 0, timeout=60_000)
    qtbot.wait(200)
    assert len(QgsProject.instance().layerTreeRoot().children()) == before  # (no traceback: pytest-qt fails on one)
    assert dock.progress.text() == shown and dock.run_button.isEnabled() is False  # nothing told the widgets


class _CutShort(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"x" * 1000)  # then the engine goes away

    def log_message(self, *args):
        pass


def test_a_download_cut_short_leaves_no_file(tmp_path):
    from qgis_farslip.client import EngineClient, EngineError

    server = ThreadingHTTPServer(("127.0.0.1", 0), _CutShort)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = EngineClient(f"http://127.0.0.1:{server.server_address[1]}", "t")
        with pytest.raises(EngineError, match="cut off after 1,000 of 100,000 bytes"):
            client.download("0" * 32, "result_classes.tif", tmp_path)
    finally:
        server.shutdown()
    assert list(tmp_path.iterdir()) == []  # neither the file nor its .partial


def test_a_token_qgis_cannot_store_is_asked_for_once_and_said_once(qgis_app, monkeypatch):
    from qgis_farslip import auth, settings
    from qgis_farslip.engine_panel import EnginePanel

    asked = []
    monkeypatch.setattr(auth, "store_token", lambda *a, **k: asked.append(a) or "")  # no master password given
    messages = []
    panel = EnginePanel(lambda level, text: messages.append((level, text)))
    panel.url_edit.setText("http://engine.example:8765")
    panel.token_edit.setText("remote-secret")
    for _ in range(5):  # a check, the legend, a run...
        assert panel.client().token == "remote-secret"
    assert len(asked) == 1
    assert [level for level, _ in messages] == ["warning"] and "only until QGIS closes" in messages[0][1]
    assert settings.engine_settings()["token"] == "remote-secret"  # Processing runs use it too, this session
    panel.token_edit.setText("")  # no token typed for a remote engine: the local engine's is not sent there
    assert panel.client().token == ""
    settings._not_stored.clear()


def test_label_regions_takes_multipart_and_empty_features_custom_crs_and_a_rendered_copy(
        qgis_app, processing_with_engine, folder, tmp_path):
    from qgis.core import (QgsCoordinateReferenceSystem, QgsFeature, QgsGeometry, QgsProject, QgsRasterLayer,
                           QgsRectangle, QgsVectorLayer)

    processing, engine = processing_with_engine
    layer = QgsRasterLayer(str(folder / "small.tif"), "small")
    e = layer.extent()
    regions = QgsVectorLayer("MultiPolygon?crs=EPSG:32633&field=name:string", "regions", "memory")

    def part(x0, y0, x1, y1):
        return QgsGeometry.fromRect(QgsRectangle(e.xMinimum() + x0, e.yMinimum() + y0, e.xMinimum() + x1,
                                                 e.yMinimum() + y1))

    features = []
    for name, geometry in (("two parts", QgsGeometry.collectGeometry([part(1, 1, 3, 3), part(10, 10, 40, 40)])),
                           ("no geometry", QgsGeometry()), ("one", part(20, 5, 50, 30))):
        f = QgsFeature(regions.fields())
        f["name"] = name
        f.setGeometry(geometry)
        features.append(f)
    regions.dataProvider().addFeatures(features)
    done = processing.run("farslip:label_regions", {"INPUT": layer, "REGIONS": regions, "CLASSES": "water\ngrass",
                                                    "OUTPUT": "TEMPORARY_OUTPUT"})
    out = {f["name"]: f for f in done["OUTPUT"].getFeatures()}
    assert set(out) == {"two parts", "no geometry", "one"}
    assert out["no geometry"]["farslip_class"] in (None, "") or str(out["no geometry"]["farslip_class"]) == "NULL"
    for name in ("two parts", "one"):
        assert out[name]["farslip_class"] in ("water", "grass") and out[name]["farslip_valid_fraction"] == 1.0
    # the same regions in a custom CRS (no EPSG code), on a raster the engine does not read by path (ENVI):
    # the regions' area is rendered and sent
    from osgeo import gdal

    gdal.Translate(str(tmp_path / "small.envi"), str(folder / "small.tif"), format="ENVI")
    envi = QgsRasterLayer(str(tmp_path / "small.envi"), "small (ENVI)")
    assert envi.isValid() and envi.crs() == layer.crs()
    custom = QgsCoordinateReferenceSystem()
    custom.createFromProj("+proj=tmerc +lon_0=15.3 +k=0.9996 +x_0=500000 +datum=WGS84 +units=m +no_defs")
    assert not custom.authid().startswith("EPSG")
    moved = processing.run("native:reprojectlayer", {"INPUT": regions, "TARGET_CRS": custom,
                                                     "OUTPUT": "TEMPORARY_OUTPUT"})["OUTPUT"]
    again = processing.run("farslip:label_regions", {"INPUT": envi, "REGIONS": moved, "CLASSES": "water\ngrass",
                                                     "OUTPUT": "TEMPORARY_OUTPUT"})
    got = {f["name"]: f for f in again["OUTPUT"].getFeatures()}
    for name in ("two parts", "one"):
        assert got[name]["farslip_valid_fraction"] == pytest.approx(1.0, abs=0.02)
        assert got[name]["farslip_class"] in ("water", "grass")
    QgsProject.instance().clear()


@pytest.fixture
def processing_with_engine(processing, engine):
    from qgis_farslip.settings import save_engine_settings

    save_engine_settings(engine.url, engine.token)
    return processing, engine


def test_a_second_set_up_brings_the_first_forward_and_a_bad_start_command_is_said(qgis_app, qtbot):
    from qgis_farslip.engine_panel import EnginePanel

    messages = []
    panel = EnginePanel(lambda level, text: messages.append((level, text)))
    qtbot.addWidget(panel)
    first = panel.open_setup()
    assert panel.open_setup() is first
    first.close()
    panel.command_edit.setText('"/opt/farslip/bin/farslip serve --port 8765')  # an unbalanced quote
    panel.start(panel.command_edit.text())
    assert messages[-1][0] == "critical" and "start command cannot be read" in messages[-1][1]
    assert not panel.local.running()
    assert panel.can_start_for() is False


def test_class_sets_that_cannot_be_read_or_written_are_said(dock, tmp_path):
    latin = tmp_path / "classes.txt"
    latin.write_bytes("forêt\nprairie\n".encode("latin-1"))
    dock.prompt_edit.setPlainText("water")
    dock.import_set(str(latin))
    assert dock.prompt_edit.toPlainText() == "water"
    assert dock.messages[-1] == ("critical", "classes.txt is not a UTF-8 text file: save it as UTF-8 (one class "
                                             "per line)")
    dock.export_set(str(tmp_path / "missing-folder" / "out.txt"))
    assert dock.messages[-1][0] == "critical" and "cannot write" in dock.messages[-1][1]


def test_rendered_copies_are_deleted_on_the_engine_however_the_run_ends(make_dock, qtbot, folder):
    uploads = folder / "data" / "uploads"

    def kept() -> list:
        return [p for p in uploads.iterdir() if not p.name.startswith(".")] if uploads.exists() else []

    dock = make_dock()
    dock.upload_check.setChecked(True)  # Send a copy of the image
    dock.prompt_edit.setPlainText("water\ngrass")
    before = set(kept())
    dock.run()
    qtbot.waitUntil(lambda: dock.run_button.isEnabled(), timeout=120_000)
    assert dock.last_error is None, dock.last_error
    assert set(kept()) == before  # done: the copy is gone
    dock.prompt_edit.setPlainText("water\nwater")  # refused by the engine (a class named twice)
    dock.run()
    qtbot.waitUntil(lambda: dock.run_button.isEnabled(), timeout=120_000)
    assert dock.last_error and "water" in dock.last_error
    assert set(kept()) == before  # refused: the copy is gone too


def test_an_area_too_large_to_render_at_the_working_gsd_gets_a_coarser_one(qgis_app, folder):
    """Label regions far apart on a raster the engine does not read by path: the rendered area must fit what
    QGIS renders in one go (40 million pixels), so it is sent coarser (the algorithm says so in its log)."""
    from qgis.core import QgsRasterLayer, QgsRectangle

    from qgis_farslip.jobs import MAX_RENDER_PIXELS, render_fitting, render_plan
    from qgis_farslip.raster_snapshot import RasterSnapshot

    raster = RasterSnapshot.of(QgsRasterLayer(str(folder / "small.tif"), "small"))  # UTM, 0.5 m pixels
    near = QgsRectangle(500000.0, 5200000.0, 500100.0, 5200100.0)
    assert render_fitting(raster, near, None) == 0.5
    far = QgsRectangle(500000.0, 5200000.0, 514000.0, 5214000.0)  # 14 km: 784 million pixels at 0.5 m
    gsd = render_fitting(raster, far, None)
    _, resolution = render_plan(raster, far, gsd)
    pixels = round(far.width() / resolution) * round(far.height() / resolution)
    assert gsd > 0.5 and MAX_RENDER_PIXELS / 2.25 < pixels <= MAX_RENDER_PIXELS  # no coarser than needed


def test_save_to_typed_by_hand_never_means_qgis_working_folder(dock, qtbot, tmp_path, monkeypatch):
    """*Save to* empty, relative or with "~": results go under the project's folder (or the default, or the
    home folder), never into whatever folder QGIS was started from; the layers' sources are absolute."""
    from pathlib import Path

    from qgis.core import QgsProject

    home, elsewhere = tmp_path / "home", tmp_path / "started-from"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(elsewhere)
    project_folder = Path(QgsProject.instance().homePath())
    dock.prompt_edit.setPlainText("water\ngrass")
    for typed, under in (("", project_folder / "farslip"), ("  results ", project_folder / "results"),
                         ("~/maps", home / "maps")):
        dock.folder_widget.setFilePath(typed)
        dock.run()
        qtbot.waitUntil(lambda: dock.run_button.isEnabled(), timeout=120_000)
        assert dock.last_error is None, dock.last_error
        source = Path(_groups()[0].findLayers()[-1].layer().source())
        assert source.is_absolute() and source.parent.parent == under, (typed, source)
    assert not any(elsewhere.iterdir())


def test_two_runs_into_one_folder_name_keep_both_results(dock, tmp_path):
    """Runs that start in the same second get the same folder name: the second goes beside the first
    (`-2`), never over its files."""
    import dataclasses
    import hashlib

    from qgis_farslip.jobs import run_segmentation

    dock.prompt_edit.setPlainText("water\ngrass")
    request, client, folder = dock.build_request(), dock.client(), tmp_path / "small_water-grass_20261207-120000"
    first, first_folder = run_segmentation(client, request, str(folder))
    classes = first_folder / first["files"]["classes"]
    before = hashlib.sha256(classes.read_bytes()).hexdigest()
    second, second_folder = run_segmentation(client, dataclasses.replace(request, threshold=0.9), str(folder))
    assert first_folder == folder and second_folder == folder.with_name(folder.name + "-2")
    assert hashlib.sha256(classes.read_bytes()).hexdigest() == before
    assert (second_folder / second["files"]["classes"]).is_file()


def test_an_engine_url_typed_without_http_or_with_v1_works(dock, qtbot):
    """"127.0.0.1:8765" (no scheme) or a URL copied with the API's "/v1/" reach the engine, and the field
    shows the URL as it is used."""
    url = dock.url_edit.text()
    dock.prompt_edit.setPlainText("water\ngrass")
    for typed in (url.removeprefix("http://"), f"{url}/v1/"):
        dock.url_edit.setText(typed)
        dock.url_edit.editingFinished.emit()
        assert dock.url_edit.text() == url
        dock.url_edit.setText(typed)  # also as typed, before the field is left
        dock.run()
        qtbot.waitUntil(lambda: dock.run_button.isEnabled(), timeout=120_000)
        assert dock.last_error is None, (typed, dock.last_error)


def test_opening_another_project_mid_run_adds_nothing_to_it(dock, qtbot, folder, tmp_path):
    """File → New (or Open) while a run is under way: the new project gets no layers of the old one's run;
    the user is told where its files are."""
    from qgis.core import QgsProject, QgsRasterLayer

    big = QgsRasterLayer(str(folder / "large.tif"), "large")
    QgsProject.instance().addMapLayer(big)
    dock.layer_combo.setLayer(big)
    dock.prompt_edit.setPlainText("water\ngrass")
    task = dock.run()
    QgsProject.instance().clear()  # at once: the run cannot have finished
    QgsProject.instance().setFileName(str(tmp_path / "other" / "other.qgz"))
    qtbot.waitUntil(lambda: dock.run_button.isEnabled(), timeout=300_000)
    assert not QgsProject.instance().layerTreeRoot().children()
    assert dock.last_error.startswith("another project was opened while this ran: its results were not added")
    assert str(task.folder) in dock.last_error and any(task.folder.glob("*_classes.tif"))


def test_a_leading_comma_does_not_blank_the_run_title(dock, qtbot):
    """", roof" is the class "roof" to the engine (an empty synonym is no name): the run's group and folder
    say "roof" too."""
    dock.prompt_edit.setPlainText(", roof\nwater")
    task = dock.run()
    qtbot.waitUntil(lambda: dock.run_button.isEnabled(), timeout=120_000)
    assert dock.last_error is None, dock.last_error
    assert _groups()[0].name().startswith("small — roof, water (") and "_roof-water_" in task.folder.name


def test_a_runs_folder_keeps_class_and_layer_names_in_any_script():
    """A layer and classes named in Chinese or with accents: the run's folder says so (it was 'x_x-x-x_…')."""
    from qgis_farslip.outputs import run_folder_name

    name = run_folder_name("正射影像 2024", ["建筑, 屋顶", "forêt", "eau_libre", "🌲 trees"], when=0)
    assert name.startswith("正射影像-2024_建筑-forêt-eau-libre_"), name
    assert run_folder_name("🛰️", ["🌲"], when=0).startswith("x_x_")


def test_a_label_called_null_teaches_and_an_empty_one_does_not(qgis_app):
    """A class named "NULL" (its text reads as QGIS's NULL) is a label like any other; a NULL, empty or blank
    class field is no label."""
    from qgis.core import QgsFeature

    from qgis_farslip.teaching import labelled_polygons
    from tests.plugin.label_polygons import memory_layer, rectangle

    layer = memory_layer("labels", [("NULL", 10, 20, 110, 100), ("water", 10, 150, 110, 220)])
    blanks = []
    for value in (None, "", "  "):
        feature = QgsFeature(layer.fields())
        feature.setGeometry(rectangle(130, 20, 155, 100))
        if value is not None:
            feature["class"] = value
        blanks.append(feature)
    assert layer.dataProvider().addFeatures(blanks)[0]
    assert [item["label"] for item in labelled_polygons(layer, "class")] == ["NULL", "water"]
