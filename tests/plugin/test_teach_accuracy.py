"""The Labels tab as a user drives it, on a real engine: teach the classes from the FarSLIP labels layer,
see the taught classes in the Segment tab and segment with them, check accuracy against a reference layer
(table and picture in the dock, files in the run's folder); what the user reads when the engine no
longer has the taught classes or the segmentation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.plugin import task_status
from tests.plugin.label_polygons import LABELS, REFERENCE, add_polygons, memory_layer

CLASSES = "water\ngrass\nroof, building\nroad"


@pytest.fixture
def dock(dock):
    """The shared dock (conftest) with the classes the labels name."""
    dock.prompt_edit.setPlainText(CLASSES)
    return dock


def _payload_classes(dock):
    from qgis_farslip.client import EngineClient
    from qgis_farslip.jobs import build_payload

    return build_payload(EngineClient(dock.url_edit.text(), dock.token_edit.text()), dock.build_request(),
                         "/tmp")["classes"]


def test_teach_from_the_labels_layer_segment_with_it_and_check_accuracy(dock, qtbot, tmp_path):
    from qgis.core import QgsLayerTreeGroup, QgsProject

    from qgis_farslip.labelling import labels_layer

    panel = dock.labels_panel
    QgsProject.instance().addMapLayer(memory_layer("some polygons", LABELS[:1], "kind"))
    labels = labels_layer(dock.layer_combo.currentLayer().crs())  # the FarSLIP labels layer, as labelling makes it
    add_polygons(labels, LABELS)
    assert panel.teach_layer_combo.currentLayer() is labels and panel.teach_field_combo.currentField() == "class"
    assert panel.against_label.text().endswith("(none yet: press Segment first)")
    # teach: on the whole raster, whatever area the Segment tab would segment
    dock.scope_combo.setCurrentText("Selected polygons")  # nothing selected: a Segment run would refuse
    assert panel.teach() is not None and not panel.teach_button.isEnabled()
    qtbot.waitUntil(lambda: panel.teach_button.isEnabled(), timeout=120_000)
    assert dock.last_error is None, dock.last_error
    dock.scope_combo.setCurrentText("Whole layer")
    assert dock.taught_row.isVisibleTo(dock) and dock.clear_taught_button.isVisibleTo(dock)
    assert re.fullmatch(r"classes taught from 8 polygons \(α \d\.\d\) — used by Segment, Classify grid and Label a "
                        r"region", dock.taught_label.text())
    assert panel.progress.text().startswith("done: classes taught from 8 polygons")
    [saved] = (tmp_path / "farslip").glob("taught_small_water-grass-roof_*/small.classes.json")
    assert dock.taught.path == saved and dock.messages[-1][0] == "info"
    # the next segmentation names the taught classes: their file, sent to the engine
    assert re.fullmatch(r"@upload:[0-9a-f]{32}", _payload_classes(dock))
    dock.prompt_edit.setPlainText(CLASSES + "\ntree")  # other classes: the taught ones no longer apply
    assert "not used" in dock.taught_label.text() and isinstance(_payload_classes(dock), list)
    dock.prompt_edit.setPlainText(CLASSES)
    assert dock.taught_label.text().endswith("used by Segment, Classify grid and Label a region")
    dock.run()
    qtbot.waitUntil(lambda: dock.run_button.isEnabled(), timeout=120_000)
    assert dock.last_error is None, dock.last_error
    [group] = [node for node in QgsProject.instance().layerTreeRoot().children()  # the labels layer stays on top
               if isinstance(node, QgsLayerTreeGroup)]
    assert group.name().startswith("small — water, grass, roof, road (")
    assert panel.against_label.text() == f"against: {group.name()}"
    # check accuracy against a reference layer with its own field name
    reference = memory_layer("reference", REFERENCE, "truth")
    QgsProject.instance().addMapLayer(reference)
    panel.reference_combo.setLayer(reference)
    assert panel.reference_field_combo.currentField() == "truth"
    assert not panel.report_box.isVisibleTo(panel)
    assert panel.check_accuracy() is not None
    qtbot.waitUntil(lambda: panel.check_button.isEnabled(), timeout=120_000)
    assert dock.last_error is None, dock.last_error
    assert panel.report_box.isVisibleTo(panel)
    assert re.fullmatch(r"mIoU \d\.\d\d · overall accuracy \d+\.\d% · kappa -?\d\.\d\d", panel.headline_label.text())
    table = panel.accuracy_table
    assert [table.horizontalHeaderItem(c).text() for c in range(4)] == ["Class", "IoU", "Precision", "Recall"]
    assert {table.item(r, 0).text() for r in range(table.rowCount())} == {"water", "grass", "roof", "road"}
    assert all(re.fullmatch(r"\d\.\d\d", table.item(r, c).text()) for r in range(table.rowCount()) for c in (1, 2, 3))
    picture = panel.confusion_label.pixmap()
    assert picture is not None and not picture.isNull() and picture.width() <= 300
    run_folder = Path(group.findLayers()[-1].layer().source()).parent
    [checked] = run_folder.glob("accuracy_reference_*")
    assert sorted(p.name for p in checked.iterdir()) == ["accuracy.json", "confusion.csv", "confusion.png"]
    assert str(checked) in panel.files_label.text()
    # back to names only
    dock.clear_taught_button.click()
    assert not dock.taught_row.isVisibleTo(dock) and isinstance(_payload_classes(dock), list)


def test_the_engine_no_longer_having_the_taught_classes_or_the_run_is_said_in_gui_words(dock, qtbot):
    from qgis.core import QgsProject

    from qgis_farslip.teaching import Taught

    panel = dock.labels_panel
    # what the dock holds after the engine was restarted: a teach job and a segmentation it no longer knows
    dock.set_taught(Taught("f" * 32, ["water", "grass", "roof, building", "road"], 8, 8, 0.5, ["water"]))
    before = len(QgsProject.instance().layerTreeRoot().children())
    dock.run()
    qtbot.waitUntil(lambda: dock.run_button.isEnabled(), timeout=60_000)
    assert dock.last_error.startswith("the engine no longer has the taught classes") and "Clear" in dock.last_error
    assert "gone from the engine" in dock.taught_label.text()
    dock.model_combo.setEditText("farslip2-vit-b-16")  # the engine's model list arriving late keeps it said
    assert "gone from the engine" in dock.taught_label.text()
    assert len(QgsProject.instance().layerTreeRoot().children()) == before
    dock.last_segmentation = {"job": "0" * 32, "folder": str(dock.folder_widget.filePath()), "title": "old run"}
    reference = memory_layer("reference", REFERENCE)
    QgsProject.instance().addMapLayer(reference)
    panel.reference_combo.setLayer(reference)
    panel.check_accuracy()
    qtbot.waitUntil(lambda: panel.check_button.isEnabled(), timeout=60_000)
    assert dock.last_error.startswith("the engine no longer has the last segmentation") and "Segment again" in dock.last_error
    # nothing to check yet, or no labelled polygon: said before anything runs
    dock.last_segmentation = None
    assert panel.check_accuracy() is None and dock.last_error.startswith("press Segment first")
    unlabelled = memory_layer("unlabelled", [])
    QgsProject.instance().addMapLayer(unlabelled)
    panel.teach_layer_combo.setLayer(unlabelled)
    assert panel.teach() is None and dock.last_error == "the layer unlabelled has no polygons with a class in 'class'"


def test_cancelling_teaching_is_reported_as_cancelled_and_teaches_nothing(dock, qtbot, engine):
    """The engine is paused while the task starts and the user cancels (teaching 8 polygons on a small raster
    can finish before a cancel arrives on a fast machine), then resumed."""
    import os
    import signal

    from qgis.core import QgsProject

    panel = dock.labels_panel
    labels = memory_layer("my labels", LABELS)
    QgsProject.instance().addMapLayer(labels)
    panel.teach_layer_combo.setLayer(labels)
    os.kill(engine.proc.pid, signal.SIGSTOP)
    try:
        statuses = task_status.record(panel.teach())
        assert panel.cancel_button.isEnabled()
        panel.cancel()
    finally:
        os.kill(engine.proc.pid, signal.SIGCONT)
    qtbot.waitUntil(lambda: panel.teach_button.isEnabled(), timeout=60_000)
    assert panel.progress.text() == "cancelled" and dock.messages[-1][0] == "info"  # not an error
    assert task_status.not_reported_as_failed(statuses), statuses
    assert dock.taught is None and not dock.taught_row.isVisibleTo(dock) and isinstance(_payload_classes(dock), list)


def test_labels_in_a_curved_polygon_layer_teach(dock, qtbot):
    """WFS and GML parcel layers come as MultiSurface, with circular arcs: their polygons teach as any others
    (the engine reads no curves: the plugin sends them as straight segments)."""
    from qgis.core import QgsFeature, QgsGeometry, QgsProject, QgsVectorLayer

    from tests.plugin.label_polygons import ORIGIN, RES, rectangle

    layer = QgsVectorLayer("MultiSurface?crs=EPSG:32633&field=class:string", "parcels (GML)", "memory")
    features = []
    for name, *box in LABELS:
        feature = QgsFeature(layer.fields())
        feature.setGeometry(QgsGeometry.fromWkt(rectangle(*box).asWkt().replace("Polygon", "MultiSurface (Polygon")
                                                + ")"))
        feature["class"] = name
        features.append(feature)
    x, y = ORIGIN[0] + 60 * RES, ORIGIN[1] - 60 * RES  # a round pond inside the water
    pond = QgsFeature(layer.fields())
    pond.setGeometry(QgsGeometry.fromWkt(f"MultiSurface (CurvePolygon (CircularString ({x - 10} {y}, {x} {y + 10}, "
                                         f"{x + 10} {y}, {x} {y - 10}, {x - 10} {y})))"))
    pond["class"] = "water"
    assert layer.dataProvider().addFeatures(features + [pond])[0]
    QgsProject.instance().addMapLayer(layer)
    panel = dock.labels_panel
    panel.teach_layer_combo.setLayer(layer)
    assert panel.teach() is not None
    qtbot.waitUntil(lambda: panel.teach_button.isEnabled(), timeout=120_000)
    assert dock.last_error is None, dock.last_error
    assert dock.taught_label.text().startswith("classes taught from 9 polygons")


def test_references_outside_the_segmented_area_are_said_in_gui_words(dock, qtbot):
    from qgis.core import QgsProject, QgsRectangle

    layer = dock.layer_combo.currentLayer()
    e = layer.extent()
    dock.canvas.setExtent(QgsRectangle(e.xMinimum() + 120, e.yMinimum(), e.xMaximum(), e.yMaximum()))  # the east
    dock.scope_combo.setCurrentText("Visible map extent")
    dock.run()
    qtbot.waitUntil(lambda: dock.run_button.isEnabled(), timeout=120_000)
    assert dock.last_error is None, dock.last_error
    reference = memory_layer("west water", [r for r in REFERENCE if r[0] == "water"], "truth")  # all in the west
    QgsProject.instance().addMapLayer(reference)
    panel = dock.labels_panel
    panel.reference_combo.setLayer(reference)
    panel.check_accuracy()
    qtbot.waitUntil(lambda: panel.check_button.isEnabled(), timeout=120_000)
    level, text = dock.messages[-1]
    assert level == "critical" and "overlaps the area of the segmentation it is checked against" in text, text
    assert "result_classes.tif" not in text and "GeoJSON" not in text
