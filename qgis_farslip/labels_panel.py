"""The dock's "Labels" tab: "Teach from labels" (a polygon layer — the FarSLIP labels layer by default —
and its class field teach the Segment tab's classes on its raster; the next segmentation uses them) and
"Check accuracy against a layer" (reference polygons against this session's last segmentation: mIoU,
overall accuracy, kappa, a per-class table and the confusion picture, the files saved in the run's
folder). Both run as QgsTasks with progress and cancel."""

from __future__ import annotations

import time
from pathlib import Path

from qgis.core import QgsApplication, QgsFieldProxyModel, QgsMapLayerProxyModel, QgsProject
from qgis.gui import QgsFieldComboBox, QgsMapLayerComboBox
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtGui import QPixmap
from qgis.PyQt.QtWidgets import (QAbstractItemView, QFormLayout, QGroupBox, QHBoxLayout, QHeaderView, QLabel,
                                 QProgressBar, QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from qgis_farslip import prompt_sets
from qgis_farslip.client import EngineError, engine_url
from qgis_farslip.jobs import check_render_size, needs_upload, render_plan
from qgis_farslip.labelling import LABELS_LAYER
from qgis_farslip.outputs import class_title, run_folder_name, safe_name
from qgis_farslip.raster_snapshot import RasterSnapshot, crs_text
from qgis_farslip.tasks import JobTask, show_ended, show_progress
from qgis_farslip.taught_files import keep_as
from qgis_farslip.teaching import (TeachRequest, labelled_polygons, report_headline, report_rows,
                                   run_accuracy, run_teach)

PICTURE_WIDTH = 300  # the confusion picture, scaled to fit the narrow dock (the file keeps its full size)
CLASS_FIELDS = ("class", "label", "classe", "klasse", "name")


def _is_labels_layer(layer) -> bool:
    return layer is not None and (layer.name() == LABELS_LAYER or "farslip_labels.gpkg" in layer.source())


class ClassFieldCombo(QgsFieldComboBox):
    """The fields of the layer chosen in `layer_combo`, a class-like field ("class", "label", …) preselected.
    Follows the layer through a bound slot, so Qt disconnects it when either widget goes."""

    def __init__(self, layer_combo: QgsMapLayerComboBox, parent=None):
        super().__init__(parent)
        self.setFilters(QgsFieldProxyModel.Filter.String | QgsFieldProxyModel.Filter.Int
                        | QgsFieldProxyModel.Filter.LongLong)
        layer_combo.layerChanged.connect(self.follow)
        self.follow(layer_combo.currentLayer())

    def follow(self, layer) -> None:
        self.setLayer(layer)
        names = [f.name() for f in layer.fields()] if layer is not None else []
        for wanted in CLASS_FIELDS:
            match = next((n for n in names if n.lower() == wanted), None)
            if match:
                self.setField(match)
                return


class LabelsPanel(QWidget):
    def __init__(self, dock, parent=None):
        super().__init__(parent)
        self.dock = dock
        self.task: JobTask | None = None
        layout = QVBoxLayout(self)
        layout.addWidget(self._teach_box())
        layout.addWidget(self._accuracy_box())
        row = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        layout.addWidget(self._report_box())
        layout.addStretch(1)
        self.teach_button.clicked.connect(self.teach)
        self.check_button.clicked.connect(self.check_accuracy)
        self.cancel_button.clicked.connect(self.cancel)
        QgsProject.instance().layersAdded.connect(self._layers_added)
        self._prefer_labels_layer(QgsProject.instance().mapLayers().values())
        self.show_last_segmentation()

    # --- sections ------------------------------------------------------------------------------
    def _teach_box(self) -> QGroupBox:
        box = QGroupBox("Teach from labels")
        box.setToolTip("Polygons labelled with the Segment tab's class names teach the engine what those classes "
                       "look like on this raster; the next Segment run uses what it learned")
        form = QFormLayout(box)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.teach_layer_combo = QgsMapLayerComboBox()
        self.teach_layer_combo.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        self.teach_layer_combo.setMinimumContentsLength(10)
        form.addRow("Labels", self.teach_layer_combo)
        self.teach_field_combo = ClassFieldCombo(self.teach_layer_combo)
        form.addRow("Class field", self.teach_field_combo)
        self.teach_scope_label = QLabel()
        self.teach_scope_label.setWordWrap(True)
        form.addRow(self.teach_scope_label)
        self._scope_layer = None
        self.teach_layer_combo.layerChanged.connect(self._follow_teach_layer)
        self._follow_teach_layer(self.teach_layer_combo.currentLayer())
        self.teach_button = QPushButton("Teach classes")
        self.teach_button.setToolTip("Uses the Segment tab's raster, classes, resolution and model")
        form.addRow(self.teach_button)
        return box

    def _accuracy_box(self) -> QGroupBox:
        box = QGroupBox("Check accuracy against a layer")
        box.setToolTip("Reference polygons labelled with class names, compared with the last segmentation")
        form = QFormLayout(box)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.reference_combo = QgsMapLayerComboBox()
        self.reference_combo.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        self.reference_combo.setMinimumContentsLength(10)
        form.addRow("Reference", self.reference_combo)
        self.reference_field_combo = ClassFieldCombo(self.reference_combo)
        form.addRow("Class field", self.reference_field_combo)
        self.against_label = QLabel()
        self.against_label.setWordWrap(True)
        form.addRow(self.against_label)
        self.check_button = QPushButton("Check accuracy")
        form.addRow(self.check_button)
        return box

    def _report_box(self) -> QGroupBox:
        self.report_box = box = QGroupBox("Accuracy")
        layout = QVBoxLayout(box)
        self.headline_label = QLabel()
        self.headline_label.setWordWrap(True)
        layout.addWidget(self.headline_label)
        self.accuracy_table = QTableWidget(0, 4)
        self.accuracy_table.setHorizontalHeaderLabels(["Class", "IoU", "Precision", "Recall"])
        self.accuracy_table.verticalHeader().setVisible(False)
        self.accuracy_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.accuracy_table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for column in (1, 2, 3):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.ResizeToContents)
        layout.addWidget(self.accuracy_table)
        self.confusion_label = QLabel()
        self.confusion_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout.addWidget(self.confusion_label)
        self.files_label = QLabel()
        self.files_label.setWordWrap(True)
        self.files_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.files_label)
        box.setVisible(False)
        return box

    # --- layers ------------------------------------------------------------------------------------
    def _layers_added(self, layers) -> None:
        self._prefer_labels_layer(layers)

    def _prefer_labels_layer(self, layers) -> None:
        """The FarSLIP labels layer, once loaded, is what teaching uses unless the user picks another."""
        labels = next((layer for layer in layers if _is_labels_layer(layer)), None)
        if labels is not None:
            self.teach_layer_combo.setLayer(labels)

    def _follow_teach_layer(self, layer) -> None:
        """The scope line follows the chosen labels layer and its selection (bound slots: Qt drops them when
        the panel goes)."""
        if self._scope_layer is not None:
            try:
                self._scope_layer.selectionChanged.disconnect(self._show_teach_scope)
            except (TypeError, RuntimeError):  # not connected, or the layer is gone
                pass
        self._scope_layer = layer
        if layer is not None:
            layer.selectionChanged.connect(self._show_teach_scope)
        self._show_teach_scope()

    def _show_teach_scope(self, *_args) -> None:
        layer = self.teach_layer_combo.currentLayer()
        if layer is None:
            self.teach_scope_label.setText("")
        elif layer.selectedFeatureCount():
            self.teach_scope_label.setText(f"uses the {layer.selectedFeatureCount()} selected polygons only (clear "
                                           "the selection to use them all)")
        else:
            self.teach_scope_label.setText("uses all its polygons (select some to teach from those only)")
        self.teach_scope_label.setVisible(layer is not None)

    def show_last_segmentation(self) -> None:
        last = self.dock.last_segmentation
        self.against_label.setText(f"against: {last['title']}" if last else
                                   "against: the last Segment run of this session (none yet: press Segment first)")

    # --- running -------------------------------------------------------------------------------
    def _start(self, title: str, work, on_done, doing: str) -> JobTask:
        self.task = JobTask(title, work, on_done, doing)
        show_progress(self.task, self.progress)
        self.teach_button.setEnabled(False)
        self.check_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def cancel(self) -> None:
        if self.task is not None:
            self.progress.setFormat("%p% — cancelling…")
            self.task.cancel()

    def _ended(self, task: JobTask) -> bool:
        """Buttons back; True when the task succeeded (failures and cancels are reported here)."""
        self.teach_button.setEnabled(True)
        self.check_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if task.error == "cancelled":
            show_ended(self.progress, "cancelled")
            self.dock.notify("info", f"{task.title}: cancelled")
            return False
        if task.error:
            show_ended(self.progress, "failed")
            self.dock._fail(task.error)
            return False
        self.progress.setValue(100)
        return True

    def teach_request(self) -> TeachRequest:
        """The Segment tab's raster (all of it), classes, resolution and model, with the chosen labels."""
        dock = self.dock
        raster = dock.layer_combo.currentLayer()
        if raster is None:
            raise EngineError("choose a raster layer in the Segment tab")
        classes = prompt_sets.class_lines(dock.prompt_edit.toPlainText())
        if not classes:
            raise EngineError("type the classes to teach in the Segment tab (one per line)")
        layer = self.teach_layer_combo.currentLayer()
        field = self.teach_field_combo.currentField()
        selected = layer.selectedFeatureCount() if layer is not None else 0
        try:
            labels = labelled_polygons(layer, field, "labels", layer.getSelectedFeatures() if selected else None)
        except EngineError:
            if not selected:
                raise
            none = (f"the selected polygon of {layer.name()} has no class" if selected == 1 else
                    f"none of the {selected} selected polygons of {layer.name()} has a class")
            raise EngineError(f"{none} in '{field}': select labelled polygons, or clear the selection to teach from "
                              "all") from None
        snapshot = RasterSnapshot.of(raster)
        request = TeachRequest(raster=snapshot, classes=classes, labels=labels,
                               labels_crs=crs_text(layer.crs()), gsd=dock.gsd_spin.value() or None,
                               model=dock.model_combo.currentText() or None, upload=dock.upload_check.isChecked(),
                               bands=dock.band_chooser.bands(), nodata=snapshot.nodata(dock.nodata_edit.value()))
        if needs_upload(engine_url(dock.url_edit.text()), request.raster, request.upload):  # the whole raster is sent
            check_render_size(*render_plan(request.raster, None, request.gsd))
        return request

    def teach(self) -> JobTask | None:
        try:
            request = self.teach_request()
        except EngineError as exc:
            self.dock._fail(str(exc))
            return None
        layer = self.teach_layer_combo.currentLayer()
        raster = request.raster.name
        which = f"{layer.selectedFeatureCount()} selected polygons of " if layer.selectedFeatureCount() else ""
        title = f"teach {class_title(request.classes)} on {raster} from {which}{layer.name()}"
        folder = self.dock.results_folder() / f"taught_{run_folder_name(raster, request.classes)}"
        client = self.dock.client()
        return self._start(title, lambda progress, cancelled, stage: keep_as(run_teach(
            client, request, str(folder), progress, cancelled, stage), raster), self._taught, "teaching")

    def _taught(self, task: JobTask) -> None:
        if not self._ended(task):
            return
        taught = task.result
        self.dock.set_taught(taught)
        self.progress.setFormat(f"done: {taught.describe()}")
        self.dock.notify("info", f"{taught.describe()}: the next Segment run uses them")

    def check_accuracy(self) -> JobTask | None:
        last = self.dock.last_segmentation
        try:
            if last is None:
                raise EngineError("press Segment first: the check compares this session's last segmentation "
                                  "with the reference layer")
            layer = self.reference_combo.currentLayer()
            reference = labelled_polygons(layer, self.reference_field_combo.currentField(), "reference")
        except EngineError as exc:
            self.dock._fail(str(exc))
            return None
        folder = Path(last["folder"]) / f"accuracy_{safe_name(layer.name(), 30)}_{time.strftime('%Y%m%d-%H%M%S')}"
        title = f"accuracy of {last['title']} against {layer.name()}"
        client, job, crs = self.dock.client(), last["job"], crs_text(layer.crs())
        return self._start(title, lambda progress, cancelled, stage: run_accuracy(
            client, job, reference, crs, str(folder), progress, cancelled, stage), self._checked, "checking")

    def _checked(self, task: JobTask) -> None:
        if not self._ended(task):
            return
        report, folder = task.result
        self.show_report(report, folder)
        self.progress.setFormat(f"done: mIoU {report['miou']:.2f}")
        self.dock.notify("info", f"{task.title}: {report_headline(report)}")

    def show_report(self, report: dict, folder: Path) -> None:
        self.headline_label.setText(report_headline(report))
        rows = report_rows(report)
        self.accuracy_table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate(row):
                item = QTableWidgetItem(text)
                if c:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.accuracy_table.setItem(r, c, item)
        table = self.accuracy_table  # as tall as its rows (up to 8 shown; more scroll)
        shown = sum(table.rowHeight(r) for r in range(min(len(rows), 8)))
        table.setFixedHeight(table.horizontalHeader().sizeHint().height() + shown + 2 * table.frameWidth())
        picture = QPixmap(str(folder / "confusion.png"))
        if not picture.isNull():
            picture = picture.scaledToWidth(min(PICTURE_WIDTH, picture.width()),
                                            Qt.TransformationMode.SmoothTransformation)
        self.confusion_label.setPixmap(picture)
        self.confusion_label.setToolTip(str(folder / "confusion.png"))
        self.files_label.setText(f"saved in {folder}")
        self.report_box.setVisible(True)
