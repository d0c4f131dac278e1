"""Classes taught from labels outlive the QGIS session: the file Teach from labels writes (SITE.classes.json)
is listed again after a restart (remembered, and found in the project's folder) and, chosen beside Taught,
is what Segment, Classify grid and Label a region use — sent to the engine (POST /v1/classes), so an engine
that cannot read the file (another computer, other folders) uses it too, sent again when it changed or the
engine no longer has it; a file made with another model is refused in GUI words by all three, as is a file
that is no taught classes at all. Teach from labels uses only the selected polygons when the labels layer
has a selection, and says so."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import uuid

import pytest

from tests.plugin.label_polygons import LABELS, memory_layer

CLASSES = "water\ngrass\nroof, building\nroad"


def _open_project(folder):
    """A project saved inside the folders the test engine reads (its --allow-root)."""
    from qgis.core import QgsProject

    project = folder / f"site-{uuid.uuid4().hex[:8]}"
    QgsProject.instance().setFileName(str(project / "project.qgz"))
    return project


def _listed(dock) -> list[str]:
    combo = dock.taught_picker.combo
    return [combo.itemText(i) for i in range(combo.count())]


def _choose(dock, path) -> None:
    """What a user does: pick the file in the Taught list."""
    combo = dock.taught_picker.combo
    index = combo.findData(str(path.resolve()))
    assert index > 0, _listed(dock)
    combo.setCurrentIndex(index)
    combo.activated.emit(index)


def _payload_classes(dock):
    from qgis_farslip.client import EngineClient
    from qgis_farslip.jobs import build_payload

    return build_payload(EngineClient(dock.url_edit.text(), dock.token_edit.text()), dock.build_request(),
                         "/tmp")["classes"]


def test_selected_labels_teach_and_the_file_is_used_again_after_a_restart(make_dock, qtbot, folder):
    from qgis.core import QgsLayerTreeGroup, QgsProject, QgsSettings

    dock = make_dock()
    project = _open_project(folder)
    assert dock.folder_widget.filePath() == str(project / "farslip")  # results follow the project
    dock.prompt_edit.setPlainText(CLASSES)
    panel = dock.labels_panel
    labels = memory_layer("my labels", LABELS)
    QgsProject.instance().addMapLayer(labels)
    panel.teach_layer_combo.setLayer(labels)
    assert panel.teach_scope_label.text() == "uses all its polygons (select some to teach from those only)"
    first_of_each_class = [f.id() for f in labels.getFeatures()][0::2]
    labels.selectByIds(first_of_each_class)
    assert panel.teach_scope_label.text() == "uses the 4 selected polygons only (clear the selection to use them all)"
    unlabelled = memory_layer("drafts", [("", 10, 20, 110, 100)])  # a selection with no class: said before any job
    QgsProject.instance().addMapLayer(unlabelled)
    panel.teach_layer_combo.setLayer(unlabelled)
    unlabelled.selectAll()
    assert panel.teach() is None and dock.last_error == (
        "the selected polygon of drafts has no class in 'class': select labelled polygons, or clear the selection "
        "to teach from all")
    panel.teach_layer_combo.setLayer(labels)
    dock.last_error = None
    assert panel.teach() is not None
    qtbot.waitUntil(lambda: panel.teach_button.isEnabled(), timeout=120_000)
    assert dock.last_error is None, dock.last_error
    assert dock.taught_label.text().startswith("classes taught from 4 polygons (α ")  # the selection only
    [saved] = (project / "farslip").glob("taught_small_water-grass-roof_*/small.classes.json")
    assert dock.taught.path == saved and dock.taught_picker.combo.currentText().startswith("small — water, grass")

    # QGIS restarts: a new dock, the project opened again, nothing of the last session but the files on disk
    QgsSettings().remove("farslip/taught_files")  # even forgotten, the file is found in the project's folder
    dock = make_dock()
    QgsProject.instance().setFileName(str(project / "project.qgz"))
    assert dock.taught is None and not dock.taught_row.isVisibleTo(dock)
    assert _listed(dock)[0] == "none: the class names only"
    assert any(text.startswith("small — water, grass, roof, road · ") for text in _listed(dock)[1:]), _listed(dock)
    _choose(dock, saved)
    assert dock.prompt_edit.toPlainText() == CLASSES  # the file's classes
    assert dock.taught_row.isVisibleTo(dock)
    assert dock.taught_label.text().startswith("classes taught from 4 polygons (α ")
    assert dock.taught_label.text().endswith(" — used by Segment, Classify grid and Label a region")
    assert re.fullmatch(r"@upload:[0-9a-f]{32}", _payload_classes(dock))  # the file, sent to the engine
    dock.run()
    qtbot.waitUntil(lambda: dock.run_button.isEnabled(), timeout=120_000)
    assert dock.last_error is None, dock.last_error
    groups = [n for n in QgsProject.instance().layerTreeRoot().children() if isinstance(n, QgsLayerTreeGroup)]
    assert groups and groups[0].name().startswith("small — water, grass, roof, road (")
    dock.taught_picker.combo.setCurrentIndex(0)
    dock.taught_picker.combo.activated.emit(0)  # "none": back to the class names
    assert dock.taught is None and isinstance(_payload_classes(dock), list)


def _other_model_file(path):
    """A taught-classes file as `farslip classes learn` writes it, made with a model the test engine does not use."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "format": "farslip-taught-classes/1", "classes": ["water", "grass", "roof, building"], "alpha": 0.5,
        "model": {"name": "farslip1-vit-b-32", "arch": "ViT-B-32", "fingerprint": "0123456789abcdef"},
        "made": {"polygons": {"water": 1, "grass": 1, "roof": 1}},
        "prototypes": {"water": [1.0, 0.0, 0.0], "grass": [0.0, 1.0, 0.0], "roof": [0.0, 0.0, 1.0]}}))
    return path


def test_files_that_cannot_be_used_are_said_in_gui_words(make_dock, qtbot, folder):
    from qgis_farslip.client import EngineError

    dock = make_dock()
    qtbot.waitUntil(lambda: dock.online, timeout=30_000)
    other = _other_model_file(folder / "elsewhere" / f"other-{uuid.uuid4().hex[:6]}.classes.json")
    assert dock.taught_picker.browse(str(other))
    assert dock.prompt_edit.toPlainText() == "water\ngrass\nroof, building"
    assert dock.taught_label.text() == (
        "classes taught from 3 polygons (α 0.5) — made with model farslip1-vit-b-32, not the Engine tab's tiny.pt: "
        "the engine refuses them with another model — choose farslip1-vit-b-32 as Model")
    dock.run()  # the engine has the last word (it compares the weights)
    qtbot.waitUntil(lambda: dock.run_button.isEnabled(), timeout=120_000)
    assert dock.last_error.startswith("engine: these taught classes were made with model farslip1-vit-b-32 "
                                      "(ViT-B-32) and this run uses tiny.pt"), dock.last_error
    assert "choose farslip1-vit-b-32 as Model in the FarSLIP panel's Engine tab" in dock.last_error
    assert "farslip classes learn" not in dock.last_error and "--model" not in dock.last_error

    notes = folder / "elsewhere" / "notes.classes.json"
    notes.write_text("{}")
    assert not dock.taught_picker.browse(str(notes))
    assert dock.messages[-1] == ("critical", "notes.classes.json is not a taught-classes file: choose one made by "
                                             "Labels → Teach from labels")
    assert dock.taught.path == other  # nothing changed

    panel = dock.scenes_panel  # Classify grid and Label a region say the same
    panel.cell_spin.setValue(40.0)
    assert panel.classify_grid() is not None
    qtbot.waitUntil(lambda: panel.grid_button.isEnabled(), timeout=120_000)
    assert dock.messages[-1][0] == "critical" and dock.messages[-1][1].startswith(
        "engine: these taught classes were made with model farslip1-vit-b-32 (ViT-B-32) and this run uses tiny.pt")
    layer = dock.layer_combo.currentLayer()
    with pytest.raises(EngineError, match=r"^engine: these taught classes were made with model farslip1-vit-b-32 "
                                          r".*choose farslip1-vit-b-32 as Model in the FarSLIP panel's Engine tab"):
        dock.labeller().rank(layer.extent(), layer.crs())
    damaged = folder / "elsewhere" / f"damaged-{uuid.uuid4().hex[:6]}.classes.json"  # spoiled after it was chosen
    damaged.write_bytes(other.read_bytes())
    assert dock.taught_picker.browse(str(damaged))
    damaged.write_text('{"format": "something else"}')
    dock.run()
    qtbot.waitUntil(lambda: dock.run_button.isEnabled(), timeout=60_000)
    assert dock.last_error == (f"engine: {damaged.name} is not a taught-classes file (farslip-taught-classes/1); "
                               "make one with Labels → Teach from labels"), dock.last_error
    assert dock.taught_picker.browse(str(other))

    again = make_dock()  # a later session lists the file chosen (remembered), though not in its project folder
    stem = other.name[:-len(".classes.json")]
    assert any(text.startswith(f"{stem} — water, grass, roof") for text in _listed(again)), _listed(again)
    assert not any(text.startswith("notes") for text in _listed(again))


@pytest.fixture(scope="module")
def site_file(engine, folder, tmp_path_factory, qgis_app):
    """Classes taught with the test engine's model, in a folder the engine may not read (as a file on another
    computer would be)."""
    from qgis.core import QgsRasterLayer

    from qgis_farslip.client import EngineClient
    from qgis_farslip.raster_snapshot import RasterSnapshot, crs_text
    from qgis_farslip.teaching import TeachRequest, labelled_polygons, run_teach

    labels = memory_layer("labels", LABELS)
    request = TeachRequest(raster=RasterSnapshot.of(QgsRasterLayer(str(folder / "small.tif"), "small")),
                           classes=CLASSES.splitlines(), labels=labelled_polygons(labels, "class"),
                           labels_crs=crs_text(labels.crs()))
    client_folder = tmp_path_factory.mktemp("client-computer")
    taught = run_teach(EngineClient(engine.url, engine.token), request, str(client_folder))
    return taught.path.replace(client_folder / "site.classes.json")


def test_a_file_the_engine_cannot_read_is_sent_and_used_by_segment_grid_and_labelling(make_dock, qtbot, site_file):
    from qgis.core import QgsLayerTreeGroup, QgsProject

    from qgis_farslip.client import EngineError
    from qgis_farslip.labelling import LabelMapTool, RegionLabeller

    dock = make_dock()
    qtbot.waitUntil(lambda: dock.online, timeout=30_000)
    client = dock.client()
    with pytest.raises(EngineError, match="may not read that taught-classes file"):
        client.prompts(f"@{site_file}")  # by its path, this engine cannot use the file
    assert dock.taught_picker.browse(str(site_file))
    assert dock.taught_label.text().endswith(" — used by Segment, Classify grid and Label a region")
    sent = _payload_classes(dock)
    assert re.fullmatch(r"@upload:[0-9a-f]{32}", sent) and _payload_classes(dock) == sent  # sent once

    def groups():
        return [n for n in QgsProject.instance().layerTreeRoot().children() if isinstance(n, QgsLayerTreeGroup)]

    dock.run()
    qtbot.waitUntil(lambda: dock.run_button.isEnabled(), timeout=120_000)
    assert dock.last_error is None, dock.last_error
    assert groups()[0].name().startswith("small — water, grass, roof, road (")

    # Classify grid: the cells get the taught classes, the legend names them
    panel = dock.scenes_panel
    panel.cell_spin.setValue(40.0)
    task = panel.classify_grid()
    qtbot.waitUntil(lambda: panel.grid_button.isEnabled(), timeout=120_000)
    assert task.error is None, task.error
    assert groups()[0].name().startswith("small — grid of water, grass, roof, road (taught) (")
    [grid] = [n.layer() for n in groups()[0].findLayers()]
    assert [c.value() for c in grid.renderer().categories()] == ["water", "grass", "roof", "road"]
    assert {f["class"] for f in grid.getFeatures()} <= {"water", "grass", "roof", "road"}

    # Label a region: the taught classes ranked
    tool = LabelMapTool(dock.canvas, dock.labeller, dock.notify)
    layer = dock.layer_combo.currentLayer()
    tool.label(layer.extent())
    qtbot.waitUntil(lambda: tool.dialog is not None, timeout=60_000)
    assert sorted(name for name, _ in tool.dialog.ranking) == ["grass", "road", "roof", "water"]
    names_only = RegionLabeller(client, dataclasses.replace(dock.build_request(), taught=None)).rank(
        layer.extent(), layer.crs())
    assert dict(names_only) != dict(tool.dialog.ranking)  # ranked by what the labels taught, not the names
    tool.dialog.reject()

    # the engine no longer has the file (restarted, expired): sent again, the run goes on
    client.delete_upload(sent.split(":", 1)[1])
    dock.run()
    qtbot.waitUntil(lambda: dock.run_button.isEnabled(), timeout=120_000)
    assert dock.last_error is None, dock.last_error
    again = _payload_classes(dock)
    assert again != sent and re.fullmatch(r"@upload:[0-9a-f]{32}", again)

    # the file changed: sent anew, its old copy removed from the engine
    stat = site_file.stat()
    os.utime(site_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = _payload_classes(dock)
    assert changed not in (sent, again)
    with pytest.raises(EngineError, match="no upload"):
        client.delete_upload(again.split(":", 1)[1])
