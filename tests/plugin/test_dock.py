"""The dock, as a user drives it: prompts, engine status, scopes, a full run, cancel, a dead engine."""

from __future__ import annotations

import pytest

from tests.plugin import task_status
from tests.plugin.engine_process import EngineProcess


def _wait(qtbot, dock, timeout=120_000):
    qtbot.waitUntil(lambda: dock.run_button.isEnabled(), timeout=timeout)


def test_prompt_sets_fill_save_export_and_import(dock, tmp_path):
    from qgis_farslip import prompt_sets

    assert {"Urban land cover", "Land use", "LoveDA-style", "iSAID objects"} <= set(prompt_sets.all_sets())
    dock.set_combo.setCurrentText("LoveDA-style")
    dock._load_set()
    assert dock.prompt_edit.toPlainText().startswith("background\nbuilding, roof, house")
    dock.prompt_edit.setPlainText("pool, swimming pool\ntennis court")
    dock.save_set("sports")
    assert prompt_sets.all_sets()["sports"] == "pool, swimming pool\ntennis court"
    dock.export_set(str(tmp_path / "c.txt"))
    dock.prompt_edit.setPlainText("")
    dock.import_set(str(tmp_path / "c.txt"))
    assert prompt_sets.class_lines(dock.prompt_edit.toPlainText()) == ["pool, swimming pool", "tennis court"]
    dock.delete_set()
    assert "sports" not in prompt_sets.all_sets()


def _legend(dock) -> list[str]:
    return [dock.legend.item(i).text() for i in range(dock.legend.count())]


def test_engine_check_turns_green_and_the_legend_follows_typing(dock, qtbot):
    dock.check_engine()
    qtbot.waitUntil(lambda: dock.online, timeout=20_000)
    assert "cpu" in dock.status_text.text() and dock.status_light.styleSheet().endswith("#2a2")
    assert dock.model_combo.count() >= 5
    assert dock.engine_panel.models_list.item(0).text().endswith("not downloaded")  # no release in the test cache
    dock.prompt_edit.setPlainText("building, roof\nwater")  # no Check pressed: the legend follows the typing
    qtbot.waitUntil(lambda: _legend(dock) == ["building, roof", "water"], timeout=20_000)
    dock.prompt_edit.setPlainText("tree\nbare soil, sand\nroad")
    qtbot.waitUntil(lambda: _legend(dock) == ["tree", "bare soil, sand", "road"], timeout=20_000)


def test_scopes_give_the_right_extent_and_crs(dock, folder):
    from qgis.core import QgsCoordinateReferenceSystem, QgsFeature, QgsGeometry, QgsRectangle, QgsVectorLayer

    from qgis_farslip.client import EngineClient
    from qgis_farslip.jobs import build_payload

    layer = dock.layer_combo.currentLayer()
    dock.scope_combo.setCurrentText("Whole layer")
    assert dock.area(layer)[0] is None
    # a map shown in EPSG:4326: the request carries the layer-CRS bbox of that view
    from qgis.core import QgsCoordinateTransform, QgsProject

    wgs84 = QgsCoordinateReferenceSystem("EPSG:4326")
    dock.canvas.setDestinationCrs(wgs84)
    e = layer.extent()
    around = QgsRectangle(e.xMinimum() - 1000, e.yMinimum() - 1000, e.xMaximum() + 1000, e.yMaximum() + 1000)
    dock.canvas.setExtent(QgsCoordinateTransform(layer.crs(), wgs84, QgsProject.instance()).transformBoundingBox(around))
    dock.scope_combo.setCurrentText("Visible map extent")
    extent, crs = dock.area(layer)
    assert crs.authid() == "EPSG:4326"
    payload = build_payload(EngineClient(dock.url_edit.text(), dock.token_edit.text()), dock.build_request(), "/tmp")
    assert payload["bbox_crs"] == "EPSG:32633"
    bbox = payload["bbox"]
    assert bbox[0] == pytest.approx(e.xMinimum()) and bbox[3] == pytest.approx(e.yMaximum())  # clipped to the layer
    # selected polygons
    polys = QgsVectorLayer("Polygon?crs=EPSG:32633", "aoi", "memory")
    feature = QgsFeature()
    feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(e.xMinimum() + 10, e.yMinimum() + 10,
                                                          e.xMinimum() + 40, e.yMinimum() + 30)))
    polys.dataProvider().addFeatures([feature])
    QgsProject.instance().addMapLayer(polys)
    dock.scope_combo.setCurrentText("Selected polygons")
    dock.mask_combo.setLayer(polys)
    from qgis_farslip.client import EngineError

    with pytest.raises(EngineError, match="select one or more polygons"):
        dock.area(layer)
    polys.selectAll()
    extent, crs = dock.area(layer)
    assert crs.authid() == "EPSG:32633" and extent.width() == pytest.approx(30) and extent.height() == pytest.approx(20)


def test_a_run_adds_a_styled_group_named_after_the_run(dock, qtbot, tmp_path):
    import re

    from qgis.core import QgsProject

    assert dock.folder_widget.filePath() == str(tmp_path / "farslip")  # the project's folder, not /tmp
    dock.prompt_edit.setPlainText("water, river\ngrass\nbuilding, roof\nroad\ntree, forest\nbare soil")
    dock.scores_check.setChecked(True)
    task = dock.run()
    assert task is not None and not dock.run_button.isEnabled()
    _wait(qtbot, dock)
    assert dock.last_error is None, dock.last_error
    group = QgsProject.instance().layerTreeRoot().children()[0]
    assert re.fullmatch(r"small — water, grass, building, road, tree, bare soil \(\d\d:\d\d:\d\d\)", group.name())
    layers = [node.layer() for node in group.findLayers()]
    names = [lyr.name() for lyr in layers]
    assert names[0].startswith("Polygons · small ") and names[-1].startswith("Classes · small ")
    assert names[1:-1] == ["Score: water", "Score: grass", "Score: building", "Score: road", "Score: tree",
                           "Score: bare soil"]  # one band per class, above the opaque class raster
    visible = [node.layer().name() for node in group.findLayers() if node.isVisible()]
    assert "Score: water" in visible and "Score: grass" not in visible
    scores = layers[1:-1]
    assert [s.renderer().band() for s in scores] == [1, 2, 3, 4, 5, 6]
    assert scores[0].renderer().type() == "singlebandpseudocolor"
    assert [c.label for c in layers[-1].renderer().classes()] == ["water", "grass", "building", "road", "tree",
                                                                  "bare soil"]
    folder = layers[-1].source()
    assert folder.startswith(str(tmp_path / "farslip" / "small_water-grass-building_")), folder
    assert dock.progress.value() == 100 and dock.messages[-1][0] == "info"


def test_cancel_stops_the_job_and_adds_nothing(dock, qtbot, folder, engine):
    from qgis.core import QgsProject, QgsRasterLayer

    big = QgsRasterLayer(str(folder / "large.tif"), "large")
    QgsProject.instance().addMapLayer(big)
    dock.layer_combo.setLayer(big)
    before = len(QgsProject.instance().layerTreeRoot().children())
    statuses = task_status.record(dock.run())
    qtbot.waitUntil(lambda: dock.progress.value() > 0, timeout=60_000)
    dock.cancel()
    _wait(qtbot, dock)
    assert dock.last_error == "cancelled" and dock.messages[-1][0] == "info"  # not an error
    assert dock.progress.text() == "cancelled" and dock.progress.value() == 0  # not a full bar that reads as done
    assert task_status.not_reported_as_failed(statuses), statuses
    assert len(QgsProject.instance().layerTreeRoot().children()) == before
    assert engine.jobs()[0]["state"] == "cancelled"


def test_a_dead_engine_gives_a_message_not_a_traceback(dock, qtbot):
    from qgis.core import QgsProject

    dock.url_edit.setText("http://127.0.0.1:9")
    dock.check_engine()
    qtbot.waitUntil(lambda: "not answering" in dock.status_text.text(), timeout=20_000)
    assert "press Start engine" in dock.status_text.text() and not dock.online
    before = len(QgsProject.instance().layerTreeRoot().children())
    dock.run()
    _wait(qtbot, dock)
    assert "not answering" in dock.last_error and dock.messages[-1][0] == "critical"
    assert "Engine tab (Start engine)" in dock.last_error  # the fix, in GUI words
    assert len(QgsProject.instance().layerTreeRoot().children()) == before


def test_an_engine_killed_mid_job_leaves_no_half_layer(qgis_app, qtbot, folder, tmp_path):
    from qgis.core import QgsProject, QgsRasterLayer
    from qgis.gui import QgsMapCanvas

    from qgis_farslip.dock import FarSLIPDock
    from qgis_farslip.settings import save_engine_settings

    victim = EngineProcess(folder, data="data-victim").start()  # (beside the module's engine)
    save_engine_settings(victim.url, victim.token)
    dock = FarSLIPDock(QgsMapCanvas(), lambda level, text: None)
    qtbot.addWidget(dock)
    big = QgsRasterLayer(str(folder / "large.tif"), "large")
    QgsProject.instance().addMapLayer(big)
    dock.layer_combo.setLayer(big)
    dock.scope_combo.setCurrentText("Whole layer")
    dock.folder_widget.setFilePath(str(tmp_path / "r"))
    before = len(QgsProject.instance().layerTreeRoot().children())
    dock.run()
    qtbot.waitUntil(lambda: dock.progress.value() > 0, timeout=60_000)
    victim.proc.kill()
    _wait(qtbot, dock)
    assert "not answering" in dock.last_error
    assert len(QgsProject.instance().layerTreeRoot().children()) == before
    victim.stop()


def test_labelling_a_rectangle_writes_a_feature_into_a_geopackage_kept_on_top(dock, qtbot, tmp_path):
    from qgis.core import QgsProject, QgsRectangle

    from qgis_farslip.labelling import LABELS_LAYER, RankingDialog

    dock.prompt_edit.setPlainText("water, river\ngrass\nbuilding, roof")
    labeller = dock.labeller()
    layer = dock.layer_combo.currentLayer()
    e = layer.extent()
    rect = QgsRectangle(e.xMinimum() + 5, e.yMinimum() + 5, e.xMinimum() + 40, e.yMinimum() + 40)
    ranking = labeller.rank(rect, layer.crs())
    assert sorted(name for name, _ in ranking) == ["building", "grass", "water"]
    assert [p for _, p in ranking] == sorted((p for _, p in ranking), reverse=True)
    dialog = RankingDialog(ranking)
    dialog.choices.setCurrentRow(1)
    name, score = dialog.chosen()
    labels = labeller.accept(rect, layer.crs(), name, score)
    assert labels.name() == LABELS_LAYER and QgsProject.instance().mapLayersByName(LABELS_LAYER) == [labels]
    feature = next(labels.getFeatures())
    assert feature["class"] == ranking[1][0] and feature["score"] == pytest.approx(ranking[1][1])
    assert feature.geometry().boundingBox() == rect and feature["timestamp"]
    assert labels.source().split("|")[0] == str(tmp_path / "farslip" / "farslip_labels.gpkg")  # kept on disk
    root = QgsProject.instance().layerTreeRoot()
    assert root.children()[0].name() == LABELS_LAYER
    # the map tool: a rectangle drawn → the ranking arrives (asked off the UI thread) → OK writes a label
    from qgis_farslip.labelling import LabelMapTool

    tool = LabelMapTool(dock.canvas, dock.labeller, dock.notify)
    tool.label(rect)
    qtbot.waitUntil(lambda: tool.dialog is not None, timeout=30_000)
    tool.dialog.accept()
    assert labels.featureCount() == 2 and dock.messages[-1][1].startswith("labelled ")
    # a later run's group goes below the labels layer
    dock.prompt_edit.setPlainText("water\ngrass")
    dock.run()
    _wait(qtbot, dock)
    assert [n.name() for n in root.children()][0] == LABELS_LAYER and root.children()[1].name().startswith("small — ")
    dock.label_button.setChecked(True)
    assert dock.canvas.mapTool() is dock.label_tool
    dock.label_button.setChecked(False)
    assert dock.label_tool is None


def _select_triangle(dock, near: float, far: float):
    """A right triangle over the raster's south-west corner (legs from `near` to `far` m), selected in a layer of
    its own and chosen as the scope "Selected polygons": (west, south, the triangle)."""
    from qgis.core import QgsFeature, QgsGeometry, QgsProject, QgsVectorLayer

    e = dock.layer_combo.currentLayer().extent()
    x0, y0 = e.xMinimum(), e.yMinimum()
    triangle = QgsGeometry.fromWkt(f"POLYGON(({x0 + near} {y0 + near}, {x0 + far} {y0 + near}, "
                                   f"{x0 + near} {y0 + far}, {x0 + near} {y0 + near}))")
    polys = QgsVectorLayer("Polygon?crs=EPSG:32633", "fields", "memory")
    f = QgsFeature()
    f.setGeometry(triangle)
    polys.dataProvider().addFeatures([f])
    QgsProject.instance().addMapLayer(polys)
    polys.selectAll()
    dock.scope_combo.setCurrentText("Selected polygons")
    dock.mask_combo.setLayer(polys)
    return x0, y0, triangle


def test_selected_polygons_mask_the_result_and_a_copy_can_be_uploaded(dock, qtbot):
    from qgis.core import QgsGeometry, QgsProject, QgsRasterLayer

    x0, y0, _ = _select_triangle(dock, 10, 90)
    dock.upload_check.setChecked(True)  # the engine gets a rendered copy, not the path
    dock.prompt_edit.setPlainText("water\ngrass")
    dock.run()
    _wait(qtbot, dock)
    assert dock.last_error is None, dock.last_error
    classes = [n.layer() for n in QgsProject.instance().layerTreeRoot().children()[0].findLayers()
               if isinstance(n.layer(), QgsRasterLayer)][0]
    provider = classes.dataProvider()
    inside = provider.sample(QgsGeometry.fromWkt(f"POINT({x0 + 20} {y0 + 20})").asPoint(), 1)
    outside = provider.sample(QgsGeometry.fromWkt(f"POINT({x0 + 80} {y0 + 80})").asPoint(), 1)
    assert inside[1] and inside[0] in (0, 1)  # a class inside the triangle
    assert not outside[1]  # nodata outside it


def test_the_dock_starts_and_stops_a_local_engine(qgis_app, qtbot, folder, tmp_path, monkeypatch):

    from qgis.gui import QgsMapCanvas

    from qgis_farslip.dock import FarSLIPDock
    from tests.plugin.engine_process import ENGINE_PYTHON, ROOT, free_port

    monkeypatch.setenv("FARSLIP_CONFIG_DIR", str(tmp_path / "cfg"))  # where the started engine puts its token
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    port = free_port()
    dock = FarSLIPDock(QgsMapCanvas(), lambda level, text: None)
    qtbot.addWidget(dock)
    dock.url_edit.setText(f"http://127.0.0.1:{port}")
    dock.token_edit.setText("")
    dock.command_edit.setText(f"{ENGINE_PYTHON} -m engine.cli serve --port {port} --data-dir {tmp_path / 'data'} "
                              f"--model {folder / 'tiny.pt'} --arch tiny-vit-16 --device cpu")
    dock.toggle_local_engine()
    assert dock.engine_button.text() == "Stop engine" and "starting" in dock.status_text.text()
    qtbot.waitUntil(lambda: dock.engine_panel.local.state == "ready", timeout=90_000)
    qtbot.waitUntil(lambda: dock.model_combo.count() >= 5, timeout=20_000)  # ready → checked: models listed
    assert dock.status_light.styleSheet().endswith("#2a2") and dock.online
    assert any("farslip engine on" in line for line in dock.engine_panel.local.log)  # its log is shown
    dock.toggle_local_engine()  # QGIS does not wait for the engine to exit: the button waits for it
    assert dock.engine_button.text() == "Start engine" and not dock.engine_panel.engine_button.isEnabled()
    qtbot.waitUntil(lambda: dock.engine_process is None and dock.engine_panel.engine_button.isEnabled(), timeout=15_000)
    assert dock.engine_panel.local.state == "stopped"
    dock.check_engine()
    qtbot.waitUntil(lambda: "not answering" in dock.status_text.text(), timeout=20_000)


def test_clicking_a_polygon_labels_that_polygon(dock):
    from qgis.core import QgsFeature, QgsGeometry, QgsPointXY, QgsProject, QgsVectorLayer

    from qgis_farslip.labelling import LABELS_LAYER, LabelMapTool

    layer = dock.layer_combo.currentLayer()
    e = layer.extent()
    x0, y0 = e.xMinimum(), e.yMinimum()
    field = QgsGeometry.fromWkt(f"POLYGON(({x0 + 5} {y0 + 5}, {x0 + 60} {y0 + 5}, {x0 + 30} {y0 + 50}, {x0 + 5} {y0 + 5}))")
    polys = QgsVectorLayer("Polygon?crs=EPSG:32633", "parcels", "memory")
    f = QgsFeature()
    f.setGeometry(field)
    polys.dataProvider().addFeatures([f])
    QgsProject.instance().addMapLayer(polys)
    dock.mask_combo.setLayer(polys)
    dock.prompt_edit.setPlainText("water\ngrass")
    tool = LabelMapTool(dock.canvas, dock.labeller, dock.notify, dock.mask_combo.currentLayer)
    hit = tool.polygon_at(QgsPointXY(x0 + 20, y0 + 15))
    assert hit is not None and hit.equals(field)
    assert tool.polygon_at(QgsPointXY(x0 + 100, y0 + 100)) is None
    labeller = dock.labeller()
    ranking = labeller.rank(hit.boundingBox(), layer.crs(), hit)
    assert {name for name, _ in ranking} == {"water", "grass"}
    labels = labeller.accept(hit.boundingBox(), layer.crs(), ranking[0][0], ranking[0][1], polygon=hit)
    written = [g.geometry() for g in labels.getFeatures()][-1]
    assert labels.name() == LABELS_LAYER and written.equals(field)


def test_grid_and_search_from_the_dock_load_styled_layers(dock, qtbot):
    from qgis.core import QgsProject

    dock.prompt_edit.setPlainText("water\ngrass")
    panel = dock.scenes_panel
    panel.cell_spin.setValue(40.0)
    task = panel.classify_grid()
    assert task is not None
    qtbot.waitUntil(lambda: panel.grid_button.isEnabled(), timeout=120_000)
    assert task.error is None, task.error
    group = QgsProject.instance().layerTreeRoot().children()[0]
    assert group.name().startswith("small — grid of water, grass (")
    [grid] = [n.layer() for n in group.findLayers()]
    assert grid.renderer().type() == "categorizedSymbol" and grid.featureCount() == 12
    panel.query_edit.setText("a lake")
    panel.top_spin.setValue(2)
    task = panel.search()
    qtbot.waitUntil(lambda: panel.search_button.isEnabled(), timeout=120_000)
    assert task.error is None, task.error
    group = QgsProject.instance().layerTreeRoot().children()[0]
    assert group.name().startswith("small — search “a lake” (")
    boxes, heat = [n.layer() for n in group.findLayers()]
    assert 1 <= boxes.featureCount() <= 2 and heat.renderer().type() == "singlebandpseudocolor"
    assert dock.messages[-1] == ("info", f"{task.title}: done")


def test_grid_on_selected_polygons_classifies_the_cells_they_reach(dock, qtbot):
    """Scope "Selected polygons": the grid covers the cells the selection reaches, not its bounding box."""
    from qgis.core import QgsProject

    _, _, triangle = _select_triangle(dock, 1, 119)
    dock.prompt_edit.setPlainText("water\ngrass")
    panel = dock.scenes_panel
    panel.cell_spin.setValue(40.0)
    task = panel.classify_grid()
    qtbot.waitUntil(lambda: panel.grid_button.isEnabled(), timeout=120_000)
    assert task.error is None, task.error
    [grid] = [n.layer() for n in QgsProject.instance().layerTreeRoot().children()[0].findLayers()]
    cells = [g.geometry() for g in grid.getFeatures()]
    # 40 m cells from the triangle's corner: 3 × 3 in its bounding box, 6 reach inside it (3 + 2 + 1)
    assert len(cells) == 6 and all(c.intersection(triangle).area() > 0 for c in cells)


def test_segment_starts_the_local_engine_on_demand(qgis_app, qtbot, folder, tmp_path, monkeypatch):
    from qgis.core import QgsProject, QgsRasterLayer
    from qgis.gui import QgsMapCanvas

    from qgis_farslip.dock import FarSLIPDock
    from tests.plugin.engine_process import ENGINE_PYTHON, ROOT, free_port

    monkeypatch.setenv("FARSLIP_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    QgsProject.instance().clear()
    QgsProject.instance().setFileName(str(tmp_path / "project.qgz"))
    port = free_port()
    dock = FarSLIPDock(QgsMapCanvas(), lambda level, text: None)
    qtbot.addWidget(dock)
    dock.url_edit.setText(f"http://127.0.0.1:{port}")
    dock.token_edit.setText("")
    dock.command_edit.setText(f"{ENGINE_PYTHON} -m engine.cli serve --port {port} --data-dir {tmp_path / 'data'} "
                              f"--model {folder / 'tiny.pt'} --arch tiny-vit-16 --device cpu")
    dock.check_engine()
    qtbot.waitUntil(lambda: dock.engine_panel.unreachable, timeout=20_000)
    layer = QgsRasterLayer(str(folder / "small.tif"), "small")
    QgsProject.instance().addMapLayer(layer)
    dock.layer_combo.setLayer(layer)
    dock.scope_combo.setCurrentText("Whole layer")
    dock.prompt_edit.setPlainText("water\ngrass")
    assert dock.run() is None  # no engine yet: it is started first
    assert dock.progress.text() == "starting the engine…" and dock.engine_button.text() == "Stop engine"
    qtbot.waitUntil(lambda: dock.task is not None and dock.run_button.isEnabled(), timeout=120_000)
    assert dock.last_error is None, dock.last_error
    assert QgsProject.instance().layerTreeRoot().children()[0].name().startswith("small — water, grass (")
    dock.toggle_local_engine()
    qtbot.waitUntil(lambda: dock.engine_process is None, timeout=15_000)


def test_escape_cancels_a_region_question_in_flight(dock, qtbot):
    from qgis.core import QgsRectangle
    from qgis.PyQt.QtCore import QEvent, Qt
    from qgis.PyQt.QtGui import QKeyEvent

    from qgis_farslip.labelling import LabelMapTool

    dock.prompt_edit.setPlainText("water\ngrass")
    tool = LabelMapTool(dock.canvas, dock.labeller, dock.notify)
    e = dock.layer_combo.currentLayer().extent()
    tool.label(QgsRectangle(e.xMinimum() + 5, e.yMinimum() + 5, e.xMinimum() + 40, e.yMinimum() + 40))
    assert tool.pending
    tool.keyPressEvent(QKeyEvent(QEvent.Type.KeyPress, Qt.Key.Key_Escape, Qt.KeyboardModifier.NoModifier))
    assert not tool.pending and dock.messages[-1] == ("info", "labelling cancelled")
    qtbot.wait(3000)  # the engine's late answer is dropped: no dialog opens
    assert tool.dialog is None


def test_a_model_that_is_not_downloaded_says_where_to_download_it(dock, qtbot):
    dock.prompt_edit.setPlainText("water\ngrass")
    dock.model_combo.setEditText("farslip2-vit-b-32")  # a release this engine (offline) has not cached
    dock.run()
    _wait(qtbot, dock)
    assert "farslip2-vit-b-32 is not downloaded" in dock.last_error, dock.last_error
    assert "Engine tab select it and press Download model" in dock.last_error and "--model" not in dock.last_error


def test_a_grey_raster_with_a_black_frame_needs_no_terminal(dock, qtbot, folder):
    """A one-band raster with an undeclared black frame: the engine asks for bands, which the dock
    offers (R, G, B of the layer); its note about the frame reaches the message bar; a no-data value
    set in the dock makes the frame no data."""
    import numpy as np
    from osgeo import gdal, osr
    from qgis.core import QgsProject, QgsRasterLayer

    path = str(folder / "grey.tif")  # in the folder the engine serves
    data = np.random.default_rng(0).integers(1, 256, (200, 200), dtype=np.uint8)
    data[:20], data[-20:], data[:, :20], data[:, -20:] = 0, 0, 0, 0
    ds = gdal.GetDriverByName("GTiff").Create(path, 200, 200, 1, gdal.GDT_Byte)
    ds.SetGeoTransform((500000.0, 0.5, 0.0, 5200000.0, 0.0, -0.5))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32633)
    ds.SetProjection(srs.ExportToWkt())
    ds.GetRasterBand(1).WriteArray(data)
    ds = None
    layer = QgsRasterLayer(path, "grey")
    QgsProject.instance().addMapLayer(layer)
    dock.layer_combo.setLayer(layer)
    dock.prompt_edit.setPlainText("water\ngrass")

    assert dock.band_chooser.bands() is None  # "auto" until all three are chosen
    dock.run()
    _wait(qtbot, dock)
    assert '"bands": [1, 1, 1]' in dock.last_error  # the engine's hint, in the request's words…
    assert "choose the Bands in the Segment tab (e.g. 1, 1, 1 for" in dock.messages[-1][1]  # …shown in the panel's

    for combo in dock.band_chooser.combos:
        combo.setBand(1)
    dock.last_error = None
    dock.run()
    _wait(qtbot, dock)
    assert dock.last_error is None
    level, text = dock.messages[-1]
    assert level == "warning" and "edge frame of value 0" in text and text.startswith(dock.task.title)
    assert "set No data to 0 in the Segment tab if it is no data" in text
    dock.upload_check.setChecked(True)  # a copy sent: the note names the layer, not the copy's file
    dock.run()
    _wait(qtbot, dock)
    level, text = dock.messages[-1]
    assert level == "warning" and "% of grey is an edge frame of value 0" in text, text
    dock.upload_check.setChecked(False)

    dock.nodata_edit.setText("0")
    dock.run()
    _wait(qtbot, dock)
    assert dock.last_error is None and dock.messages[-1] == ("info", f"{dock.task.title}: done")
    classes = QgsProject.instance().layerTreeRoot().children()[0].findLayers()[-1].layer()
    block = classes.dataProvider().block(1, classes.extent(), 200, 200)
    assert block.value(5, 5) == 255 and block.value(100, 100) != 255  # the frame is no data, the rest classified

    from qgis.core import QgsRasterRange  # the value told QGIS instead (Transparency → Additional no data value)

    dock.nodata_edit.setText("")
    layer.dataProvider().setUserNoDataValue(1, [QgsRasterRange(0, 0)])
    dock.run()
    _wait(qtbot, dock)
    assert dock.last_error is None and dock.messages[-1] == ("info", f"{dock.task.title}: done")
    classes = QgsProject.instance().layerTreeRoot().children()[0].findLayers()[-1].layer()
    block = classes.dataProvider().block(1, classes.extent(), 200, 200)
    assert block.value(5, 5) == 255 and block.value(100, 100) != 255


def _small_as(dock, folder, name, crs_wkt=None, transform=None, driver="GTiff"):
    """The small raster's pixels written as `name` (`driver`, CRS `crs_wkt` — default its own —, geotransform
    `transform` — default its own), added to the project and chosen in the dock; the layer."""
    from osgeo import gdal
    from qgis.core import QgsProject, QgsRasterLayer

    small = gdal.Open(str(folder / "small.tif"))
    ds = gdal.GetDriverByName(driver).Create(str(folder / name), small.RasterXSize, small.RasterYSize, 3,
                                             gdal.GDT_Byte)
    ds.SetGeoTransform(transform or small.GetGeoTransform())
    ds.SetProjection(crs_wkt or small.GetProjection())
    for band in (1, 2, 3):
        ds.GetRasterBand(band).WriteArray(small.GetRasterBand(band).ReadAsArray())
    ds = small = None
    layer = QgsRasterLayer(str(folder / name), name)
    assert layer.isValid()
    QgsProject.instance().addMapLayer(layer)
    dock.layer_combo.setLayer(layer)
    return layer


def _epsg_wkt(code: int) -> str:
    from osgeo import osr

    srs = osr.SpatialReference()
    srs.ImportFromEPSG(code)
    return srs.ExportToWkt()


@pytest.mark.parametrize("driver, name, read_by_path", [("GPKG", "ortho.gpkg", True), ("ENVI", "scene.dat", False)],
                         ids=["geopackage", "envi"])
def test_a_raster_in_any_format_qgis_reads_segments_from_the_dock(dock, qtbot, folder, driver, name, read_by_path):
    """A GeoPackage raster is read by the local engine from its file; a format the engine does not read for a
    client (ENVI, as hyperspectral and SAR software writes) is rendered by QGIS and sent: both give a result."""
    from qgis.core import QgsProject

    layer = _small_as(dock, folder, name, _epsg_wkt(32633), driver=driver)
    path = str(folder / name)
    dock.prompt_edit.setPlainText("water\ngrass\nbuilding")
    dock.run()
    _wait(qtbot, dock)
    assert dock.last_error is None, dock.last_error
    assert (dock.task.summary["input"] == path) is read_by_path, dock.task.summary["input"]
    classes = QgsProject.instance().layerTreeRoot().children()[0].findLayers()[-1].layer()
    assert classes.isValid() and classes.crs().authid() == "EPSG:32633"
    assert classes.extent().toString(1) == layer.extent().toString(1)  # the result lies on the layer


def test_a_web_mercator_layer_is_sent_at_half_a_metre_on_the_ground(dock, qtbot, folder):
    """XYZ and web layers are in Web Mercator, whose metres at 52° N are 1.64× shorter than the ground's: the
    copy QGIS renders and sends is at the engine's 0.5 m on the ground, not 0.5 Web Mercator units."""
    # 52.5° N, 0.25 Web Mercator units = 0.15 m on the ground
    _small_as(dock, folder, "web.tif", _epsg_wkt(3857), (1489000.0, 0.25, 0.0, 6894000.0, 0.0, -0.25))
    dock.upload_check.setChecked(True)
    dock.prompt_edit.setPlainText("water\ngrass")
    dock.run()
    _wait(qtbot, dock)
    assert dock.last_error is None, dock.last_error
    assert dock.task.summary["source_gsd_m"] == pytest.approx(0.5, rel=0.02)


@pytest.mark.parametrize("scope", ["Whole layer", "Visible map extent"])
def test_a_layer_whose_crs_was_set_in_qgis_gets_its_results_in_that_crs(dock, qtbot, folder, scope):
    """A PNG with a world file and no .prj: QGIS knows its CRS only because the user set it (Layer CRS). The
    results lie on the layer in that CRS, for the whole layer and for the visible extent."""
    import os

    from osgeo import gdal
    from qgis.core import QgsCoordinateReferenceSystem, QgsProject, QgsRasterLayer

    path = folder / f"tile_{scope.split()[0].lower()}.png"
    gdal.GetDriverByName("PNG").CreateCopy(str(path), gdal.Open(str(folder / "small.tif")), options=["WORLDFILE=YES"])
    for name in os.listdir(folder):  # the world file stays; no CRS beside it
        if name.startswith(f"{path.name}.aux") or name.endswith(".prj"):
            os.remove(folder / name)
    assert not gdal.Open(str(path)).GetProjectionRef()
    layer = QgsRasterLayer(str(path), "tile")
    layer.setCrs(QgsCoordinateReferenceSystem("EPSG:32633"))
    QgsProject.instance().addMapLayer(layer)
    dock.layer_combo.setLayer(layer)
    dock.scope_combo.setCurrentText(scope)
    dock.prompt_edit.setPlainText("water\ngrass")
    dock.run()
    _wait(qtbot, dock)
    assert dock.last_error is None, dock.last_error
    classes = QgsProject.instance().layerTreeRoot().children()[0].findLayers()[-1].layer()
    assert classes.crs().authid() == "EPSG:32633"
    assert layer.extent().contains(classes.extent().buffered(-1.0))  # on the layer


def test_a_file_in_a_crs_without_an_epsg_code_is_read_from_its_file(dock, qtbot, folder):
    """A national grid or a custom projection (no authority code): the engine reads the file itself, on its
    own grid, rather than a copy QGIS renders."""
    from osgeo import osr

    srs = osr.SpatialReference()
    srs.SetLCC(45.0, 55.0, 50.0, 10.0, 0.0, 0.0)
    srs.SetGeogCS("custom", "custom_datum", "GRS80", 6378137.0, 298.257222101)
    layer = _small_as(dock, folder, "custom.tif", srs.ExportToWkt(), (100000.0, 0.5, 0.0, 200000.0, 0.0, -0.5))
    assert layer.crs().isValid() and not layer.crs().authid().startswith("EPSG")
    path = str(folder / "custom.tif")
    dock.prompt_edit.setPlainText("water\ngrass")
    dock.run()
    _wait(qtbot, dock)
    assert dock.last_error is None, dock.last_error
    assert dock.task.summary["input"] == path


def test_clicking_a_polygon_on_a_rendered_copy_ranks_the_polygon(dock, folder):
    """A layer the engine cannot read by path (here ENVI: a remote engine and web layers alike) is sent as a
    rendered copy of the polygon's bounding box: the polygon is still what is ranked, not its box."""
    from osgeo import gdal
    from qgis.core import QgsGeometry, QgsProject, QgsRasterLayer

    dock.prompt_edit.setPlainText("water\ngrass\nbuilding\nroad")
    tif = dock.layer_combo.currentLayer()
    gdal.Translate(str(folder / "scene.dat"), str(folder / "small.tif"), format="ENVI")
    envi = QgsRasterLayer(str(folder / "scene.dat"), "scene")
    QgsProject.instance().addMapLayer(envi)
    e = tif.extent()
    x0, y1 = e.xMinimum(), e.yMaximum()
    # a thin L: a strip down the west edge and one along the north edge; its box is mostly neither
    ell = QgsGeometry.fromWkt(f"POLYGON(({x0 + 2} {y1 - 2}, {x0 + 150} {y1 - 2}, {x0 + 150} {y1 - 10}, "
                              f"{x0 + 10} {y1 - 10}, {x0 + 10} {y1 - 110}, {x0 + 2} {y1 - 110}, {x0 + 2} {y1 - 2}))")
    ranked = {}
    for layer in (tif, envi):
        dock.layer_combo.setLayer(layer)
        labeller = dock.labeller()
        ranked[layer.name(), "polygon"] = dict(labeller.rank(ell.boundingBox(), layer.crs(), ell))
        ranked[layer.name(), "box"] = dict(labeller.rank(ell.boundingBox(), layer.crs()))

    def distance(a, b):
        return sum(abs(a[k] - b[k]) for k in a)

    copy_polygon = ranked["scene", "polygon"]
    assert distance(copy_polygon, ranked["scene", "box"]) > 0.001
    assert distance(copy_polygon, ranked["small", "polygon"]) < distance(copy_polygon, ranked["small", "box"]), ranked
