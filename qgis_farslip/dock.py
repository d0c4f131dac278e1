"""The "FarSLIP segmentation" dock: engine, prompts, input and scope, run with progress and cancel."""

from __future__ import annotations

import tempfile
from pathlib import Path

from qgis.core import QgsApplication, QgsMapLayerProxyModel, QgsRectangle, QgsVectorLayer
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtGui import QColor, QIcon, QPixmap
from qgis.PyQt.QtWidgets import (QCheckBox, QComboBox, QDockWidget, QDoubleSpinBox, QFileDialog, QFormLayout, QGroupBox,
                                 QHBoxLayout, QInputDialog, QLabel, QLineEdit, QListWidget, QListWidgetItem,
                                 QPlainTextEdit, QProgressBar, QPushButton, QScrollArea, QVBoxLayout, QWidget)

from qgis_farslip import prompt_sets
from qgis_farslip.client import EngineClient, EngineError
from qgis_farslip.jobs import SegmentationRequest
from qgis_farslip.settings import engine_settings, save_engine_settings
from qgis_farslip.tasks import SegmentTask

SCOPES = ("Visible map extent", "Whole layer", "Selected polygons")
UI_TIMEOUT_S = 3.0  # calls made on the UI thread (status, legend) give up quickly; jobs run in a QgsTask


class FarSLIPDock(QDockWidget):
    def __init__(self, canvas, notify=None, parent=None):
        super().__init__("FarSLIP segmentation", parent)
        self.setObjectName("FarSLIPDock")
        self.canvas = canvas
        self.notify = notify or (lambda level, text: None)  # (level "info"/"warning"/"critical", text)
        self.task: SegmentTask | None = None
        self.last_error: str | None = None
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.addWidget(self._engine_box())
        layout.addWidget(self._prompt_box())
        layout.addWidget(self._input_box())
        run_row = QHBoxLayout()
        self.run_button = QPushButton("Segment")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.label_button = QPushButton("Label a region…")
        self.label_button.setCheckable(True)
        self.label_button.setToolTip("Draw a rectangle on the map: the engine ranks the classes above for it")
        run_row.addWidget(self.run_button)
        run_row.addWidget(self.cancel_button)
        run_row.addWidget(self.label_button)
        layout.addLayout(run_row)
        self.progress = QProgressBar()
        layout.addWidget(self.progress)
        layout.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setWidget(body)
        self.setWidget(scroll)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.label_button.toggled.connect(self.toggle_label_tool)
        self.label_tool = None

    # --- sections ------------------------------------------------------------------------------
    def _engine_box(self) -> QGroupBox:
        box = QGroupBox("Engine")
        form = QFormLayout(box)
        settings = engine_settings()
        self.status_light = QLabel("●")
        self.status_text = QLabel("not checked")
        status_row = QHBoxLayout()
        status_row.addWidget(self.status_light)
        status_row.addWidget(self.status_text, 1)
        self.check_button = QPushButton("Check")
        status_row.addWidget(self.check_button)
        form.addRow("Status", status_row)
        self.url_edit = QLineEdit(settings["url"])
        form.addRow("URL", self.url_edit)
        self.token_edit = QLineEdit(settings["token"])
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        form.addRow("Token", self.token_edit)
        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)
        self.model_combo.setEditText(settings["model"])
        form.addRow("Model", self.model_combo)
        self.command_edit = QLineEdit(settings["command"])
        self.command_edit.setToolTip("How to start a local engine, e.g. '/path/to/.venv/bin/farslip serve'")
        self.engine_button = QPushButton("Start local engine")
        command_row = QHBoxLayout()
        command_row.addWidget(self.command_edit, 1)
        command_row.addWidget(self.engine_button)
        form.addRow("Local engine", command_row)
        self.check_button.clicked.connect(self.check_engine)
        self.engine_button.clicked.connect(self.toggle_local_engine)
        self.engine_process = None
        return box

    def _prompt_box(self) -> QGroupBox:
        box = QGroupBox("Classes (one per line, commas for synonyms)")
        layout = QVBoxLayout(box)
        row = QHBoxLayout()
        self.set_combo = QComboBox()
        self._fill_sets()
        row.addWidget(self.set_combo, 1)
        for label, slot in (("Save", self.save_set), ("Delete", self.delete_set), ("Import", self.import_set),
                            ("Export", self.export_set)):
            button = QPushButton(label)
            button.clicked.connect(slot)
            row.addWidget(button)
        layout.addLayout(row)
        self.prompt_edit = QPlainTextEdit(prompt_sets.BUILT_IN["Urban land cover"])
        layout.addWidget(self.prompt_edit)
        self.legend = QListWidget()
        self.legend.setMaximumHeight(110)
        layout.addWidget(self.legend)
        form = QFormLayout()
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 0.99)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setSpecialValueText("off")
        form.addRow("Background threshold", self.threshold_spin)
        layout.addLayout(form)
        self.set_combo.activated.connect(self._load_set)
        from qgis.PyQt.QtCore import QTimer

        self._legend_timer = QTimer(self)
        self._legend_timer.setSingleShot(True)
        self._legend_timer.setInterval(700)
        self._legend_timer.timeout.connect(self._refresh_legend_if_online)
        self.prompt_edit.textChanged.connect(self._legend_timer.start)
        self._online = False
        return box

    def _input_box(self) -> QGroupBox:
        box = QGroupBox("Input")
        form = QFormLayout(box)
        self.layer_combo = QgsMapLayerComboBox()
        self.layer_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        form.addRow("Raster", self.layer_combo)
        self.scope_combo = QComboBox()
        self.scope_combo.addItems(SCOPES)
        form.addRow("Area", self.scope_combo)
        self.mask_combo = QgsMapLayerComboBox()
        self.mask_combo.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        form.addRow("Polygons", self.mask_combo)
        self.gsd_spin = QDoubleSpinBox()
        self.gsd_spin.setRange(0.0, 10000.0)
        self.gsd_spin.setDecimals(2)
        self.gsd_spin.setSpecialValueText("engine default (≥ 0.5 m)")
        self.gsd_spin.setSuffix(" m/px")
        form.addRow("Resolution", self.gsd_spin)
        self.folder_widget = QgsFileWidget()
        self.folder_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.folder_widget.setFilePath(str(Path(tempfile.gettempdir()) / "farslip"))
        form.addRow("Save to", self.folder_widget)
        self.scores_check = QCheckBox("Also a per-class score raster")
        form.addRow("", self.scores_check)
        self.upload_check = QCheckBox("Send a copy of the image (needed for remote engines; automatic for web layers)")
        form.addRow("", self.upload_check)
        return box

    # --- engine --------------------------------------------------------------------------------
    def client(self, timeout: float = 30.0) -> EngineClient:
        save_engine_settings(self.url_edit.text().strip(), self.token_edit.text().strip(),
                             self.model_combo.currentText().strip())
        return EngineClient(self.url_edit.text().strip(), self.token_edit.text().strip() or None, timeout=timeout)

    def check_engine(self) -> bool:
        try:
            client = self.client(timeout=UI_TIMEOUT_S)
            health = client.health()
            models = client.models()
        except EngineError as exc:
            self._set_status(False, str(exc))
            return False
        self._set_status(True, f"{health['version']} on {health['device']}, {health['queue_length']} queued")
        current = self.model_combo.currentText()
        self.model_combo.clear()
        self.model_combo.addItems([models["default"]] + [r["name"] for r in models["releases"]
                                                         if r["name"] != models["default"]])
        if current:
            self.model_combo.setEditText(current)
        self.update_legend()
        return True

    def toggle_local_engine(self) -> None:
        """Start the configured engine command as a child process of QGIS, or stop the one started."""
        import shlex

        from qgis.PyQt.QtCore import QProcess

        from qgis_farslip.settings import save_engine_command

        if self.engine_process is not None and self.engine_process.state() != QProcess.ProcessState.NotRunning:
            self.engine_process.terminate()
            if not self.engine_process.waitForFinished(10_000):
                self.engine_process.kill()
            self.engine_process = None
            self.engine_button.setText("Start local engine")
            self._set_status(False, "local engine stopped")
            return
        command = shlex.split(self.command_edit.text().strip())
        if not command:
            self._fail("set the command that starts the engine (e.g. '/path/to/.venv/bin/farslip serve')")
            return
        save_engine_command(self.command_edit.text().strip())
        process = QProcess(self)
        process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        process.start(command[0], command[1:])
        if not process.waitForStarted(10_000):
            self._fail(f"cannot start the engine: {process.errorString()}")
            return
        self.engine_process = process
        self.engine_button.setText("Stop local engine")
        self._set_status(False, "local engine starting…")

    def _refresh_legend_if_online(self) -> None:
        if self._online:
            self.update_legend()

    def _set_status(self, ok: bool, text: str) -> None:
        self._online = ok
        self.status_light.setStyleSheet(f"color: {'#2a2' if ok else '#c22'}")
        self.status_text.setText(text)

    def update_legend(self) -> None:
        """Show the classes as the engine reads them, with their colours."""
        self.legend.clear()
        lines = prompt_sets.class_lines(self.prompt_edit.toPlainText())
        if not lines:
            return
        try:
            classes = self.client(timeout=UI_TIMEOUT_S).prompts(lines)
        except EngineError as exc:
            self.legend.addItem(str(exc))
            return
        for c in classes:
            swatch = QPixmap(14, 14)
            swatch.fill(QColor(c["colour"]))
            item = QListWidgetItem(QIcon(swatch), ", ".join(c["synonyms"]))
            self.legend.addItem(item)

    # --- prompt sets ---------------------------------------------------------------------------
    def _fill_sets(self) -> None:
        self.set_combo.clear()
        self.set_combo.addItems(list(prompt_sets.all_sets()))

    def _load_set(self, _index: int = 0) -> None:
        text = prompt_sets.all_sets().get(self.set_combo.currentText())
        if text is not None:
            self.prompt_edit.setPlainText(text)

    def save_set(self, name: str | None = None) -> None:
        if not name:
            name, ok = QInputDialog.getText(self, "Save prompt set", "Name")
            if not ok or not name.strip():
                return
        prompt_sets.save_set(name.strip(), self.prompt_edit.toPlainText())
        self._fill_sets()
        self.set_combo.setCurrentText(name.strip())

    def delete_set(self) -> None:
        prompt_sets.delete_set(self.set_combo.currentText())
        self._fill_sets()

    def import_set(self, path: str | None = None) -> None:
        path = path or QFileDialog.getOpenFileName(self, "Import classes", "", "Text (*.txt)")[0]
        if path:
            self.prompt_edit.setPlainText(Path(path).read_text(encoding="utf-8"))

    def export_set(self, path: str | None = None) -> None:
        path = path or QFileDialog.getSaveFileName(self, "Export classes", "classes.txt", "Text (*.txt)")[0]
        if path:
            Path(path).write_text(self.prompt_edit.toPlainText().strip() + "\n", encoding="utf-8")

    # --- region labelling ----------------------------------------------------------------------
    def labeller(self):
        from qgis_farslip.labelling import RegionLabeller

        request = self.build_request()
        return RegionLabeller(self.client(), request.layer, request.classes, request.model)

    def toggle_label_tool(self, on: bool) -> None:
        from qgis_farslip.labelling import LabelMapTool

        if on:
            self.label_tool = LabelMapTool(self.canvas, self.labeller, self.notify, self.mask_combo.currentLayer)
            self.canvas.setMapTool(self.label_tool)
        elif self.label_tool is not None:
            self.canvas.unsetMapTool(self.label_tool)
            self.label_tool = None

    # --- running -------------------------------------------------------------------------------
    def area(self, layer) -> tuple[QgsRectangle | None, object]:
        """(extent, its CRS) for the chosen scope; None = the whole layer."""
        scope = self.scope_combo.currentText()
        if scope == SCOPES[0]:
            return self.canvas.extent(), self.canvas.mapSettings().destinationCrs()
        if scope == SCOPES[2]:
            mask = self.selected_polygons()
            return mask.boundingBoxOfSelected(), mask.crs()
        return None, layer.crs()

    def selected_polygons(self) -> QgsVectorLayer:
        mask: QgsVectorLayer = self.mask_combo.currentLayer()
        if mask is None or mask.selectedFeatureCount() == 0:
            raise EngineError("select one or more polygons of the chosen layer first")
        return mask

    def mask(self) -> tuple[str | None, str | None]:
        """WKT of the selected polygons and their CRS when the scope is "Selected polygons"."""
        if self.scope_combo.currentText() != SCOPES[2]:
            return None, None
        from qgis.core import QgsGeometry

        layer = self.selected_polygons()
        union = QgsGeometry.unaryUnion([f.geometry() for f in layer.selectedFeatures()])
        return union.asWkt(), layer.crs().authid() or layer.crs().toWkt()

    def build_request(self) -> SegmentationRequest:
        layer = self.layer_combo.currentLayer()
        if layer is None:
            raise EngineError("choose a raster layer")
        classes = prompt_sets.class_lines(self.prompt_edit.toPlainText())
        if not classes:
            raise EngineError("type at least one class")
        extent, crs = self.area(layer)
        mask_wkt, mask_crs = self.mask()
        return SegmentationRequest(layer=layer, classes=classes, extent=extent, extent_crs=crs,
                                   gsd=self.gsd_spin.value() or None, model=self.model_combo.currentText() or None,
                                   threshold=self.threshold_spin.value() or None, mask_wkt=mask_wkt,
                                   mask_crs=mask_crs, upload=self.upload_check.isChecked(),
                                   scores=self.scores_check.isChecked())

    def run(self) -> SegmentTask | None:
        self.last_error = None
        try:
            request = self.build_request()
        except EngineError as exc:
            self._fail(str(exc))
            return None
        title = ", ".join(line.split(",")[0] for line in request.classes[:4])
        self.task = SegmentTask(self.client(), request, self.folder_widget.filePath(), title, on_done=self._finished)
        self.task.progressChanged.connect(lambda p: self.progress.setValue(int(p)))
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def _finished(self, task: SegmentTask) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if task.error:
            self._fail(task.error)
        else:
            self.progress.setValue(100)
            self.notify("info", f"{task.title}: done")

    def _fail(self, text: str) -> None:
        self.last_error = text
        self.notify("warning" if text == "cancelled" else "critical", text)
