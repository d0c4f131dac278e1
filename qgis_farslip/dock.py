"""The "FarSLIP segmentation" dock: tabs that fit a narrow panel (≤ 400 px) — "Segment" (classes with a
live legend, input and scope, run with progress and cancel), "Scenes" (grid classification and text
search, `scenes_panel.py`), "Labels" (teach the classes from labelled polygons, check accuracy against
reference polygons, `labels_panel.py`) and "Engine" (`engine_panel.py`)."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsApplication, QgsMapLayerProxyModel, QgsRectangle, QgsVectorLayer
from qgis.gui import QgsFileWidget, QgsMapLayerComboBox
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtGui import QColor, QIcon, QPixmap
from qgis.PyQt.QtWidgets import (QAction, QCheckBox, QComboBox, QDockWidget, QDoubleSpinBox, QFileDialog, QFormLayout,
                                 QGroupBox, QHBoxLayout, QInputDialog, QLabel, QListWidget, QListWidgetItem, QMenu,
                                 QPlainTextEdit, QProgressBar, QPushButton, QScrollArea, QTabWidget, QToolButton,
                                 QVBoxLayout, QWidget)

from qgis_farslip import prompt_sets
from qgis_farslip.background import run_async
from qgis_farslip.client import EngineError, engine_url, in_panel_terms
from qgis_farslip.engine_panel import UI_TIMEOUT_S, EnginePanel
from qgis_farslip.jobs import SegmentationRequest, check_request
from qgis_farslip.outputs import class_title, default_output_folder, done_message, results_folder
from qgis_farslip.raster_choices import BandChooser, NoDataEdit
from qgis_farslip.raster_snapshot import RasterSnapshot, crs_text
from qgis_farslip.taught_files import model_label
from qgis_farslip.taught_picker import TaughtPicker
from qgis_farslip.tasks import SegmentTask, show_ended, show_progress
from qgis_farslip.taught_refs import FORGOTTEN_TEACH

SCOPES = ("Visible map extent", "Whole layer", "Selected polygons")
MAX_WIDTH = 400  # the dock's content must fit a panel this wide
LEGEND_DELAY_MS = 500


def _scrolled(widget: QWidget) -> QScrollArea:
    scroll = QScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setWidget(widget)
    return scroll


class FarSLIPDock(QDockWidget):
    def __init__(self, canvas, notify=None, parent=None):
        super().__init__("FarSLIP segmentation", parent)
        self.setObjectName("FarSLIPDock")
        self.canvas = canvas
        shown = notify or (lambda level, text: None)  # (level "info"/"warning"/"critical", text)
        # the engine's words for its request fields as this panel's (No data, Bands…)
        self.notify = lambda level, text: shown(level, in_panel_terms(text))
        self.task: SegmentTask | None = None
        self.last_error: str | None = None
        self.taught = None  # teaching.Taught: classes taught from labels, used by the next segmentation
        self.taught_gone = False  # the engine answered that it no longer has them (see _finished)
        self.last_segmentation: dict | None = None  # {"job", "folder", "title"} of this session's last run
        self.engine_panel = EnginePanel(self._notify_from_engine)
        for name in ("status_light", "status_text", "check_button", "url_edit", "token_edit", "model_combo",
                     "command_edit", "engine_button"):
            setattr(self, name, getattr(self.engine_panel, name))
        body = QWidget()
        layout = QVBoxLayout(body)
        layout.addWidget(self._prompt_box())
        layout.addWidget(self._input_box())
        run_row = QHBoxLayout()
        self.run_button = QPushButton("Segment")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.label_button = QPushButton("Label a region…")
        self.label_button.setCheckable(True)
        self.label_button.setToolTip("Draw a rectangle on the map (or click a polygon): the engine ranks the classes")
        run_row.addWidget(self.run_button)
        run_row.addWidget(self.cancel_button)
        run_row.addWidget(self.label_button)
        layout.addLayout(run_row)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        layout.addWidget(self.progress)
        layout.addStretch(1)
        self.tabs = QTabWidget()
        from qgis_farslip.labels_panel import LabelsPanel
        from qgis_farslip.scenes_panel import ScenesPanel

        self.scenes_panel = ScenesPanel(self)
        self.labels_panel = LabelsPanel(self)
        self.tabs.addTab(_scrolled(body), "Segment")
        self.tabs.addTab(_scrolled(self.scenes_panel), "Scenes")
        self.tabs.addTab(_scrolled(self.labels_panel), "Labels")
        self.tabs.addTab(_scrolled(self.engine_panel), "Engine")
        self.tabs.setTabToolTip(1, "Scene classification on a grid and text search, on the Segment tab's raster")
        self.tabs.setTabToolTip(2, "Teach the classes from labelled polygons; check accuracy against a layer")
        self.setWidget(self.tabs)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.label_button.toggled.connect(self.toggle_label_tool)
        self.label_tool = None
        self.engine_panel.on_online.append(self.update_legend)
        self.engine_panel.on_online.append(self._engine_online)
        self.engine_panel.local.stateChanged.connect(self._engine_state)
        self.run_when_ready = False
        self._legend_asked = 0
        self._default_folder = self.folder_widget.filePath()
        self.taught_picker.refresh()
        self.model_combo.editTextChanged.connect(self._show_taught_state)
        from qgis.core import QgsProject

        QgsProject.instance().homePathChanged.connect(self._project_moved)
        QTimer.singleShot(0, self.check_engine)

    def _project_moved(self) -> None:
        """A project saved or opened: results follow it unless the user chose another folder."""
        if self.folder_widget.filePath() == self._default_folder:
            self._default_folder = default_output_folder()
            self.folder_widget.setFilePath(self._default_folder)
        self.taught_picker.refresh()  # the taught-classes files of this project's folder

    def _notify_from_engine(self, level: str, text: str) -> None:
        if level != "info":
            self.last_error = text
        self.notify(level, text)

    @property
    def engine_process(self):
        return self.engine_panel.engine_process

    @property
    def online(self) -> bool:
        return self.engine_panel.online

    # --- sections ------------------------------------------------------------------------------
    def _prompt_box(self) -> QGroupBox:
        box = QGroupBox("Classes")
        box.setToolTip("One class per line; commas separate synonyms of a class (building, roof)")
        layout = QVBoxLayout(box)
        row = QHBoxLayout()
        self.set_combo = QComboBox()
        self.set_combo.setMinimumContentsLength(10)
        self._fill_sets()
        row.addWidget(self.set_combo, 1)
        self.sets_button = QToolButton()
        self.sets_button.setText("Sets")
        self.sets_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.sets_button)
        for label, slot in (("Save as…", self.save_set), ("Delete", self.delete_set), ("Import…", self.import_set),
                            ("Export…", self.export_set)):
            action = QAction(label, menu)
            action.triggered.connect(lambda _checked=False, slot=slot: slot())
            menu.addAction(action)
        self.sets_button.setMenu(menu)
        row.addWidget(self.sets_button)
        layout.addLayout(row)
        self.prompt_edit = QPlainTextEdit(prompt_sets.BUILT_IN["Urban land cover"])
        self.prompt_edit.setMinimumHeight(80)
        self.prompt_edit.setPlaceholderText("one class per line, commas for synonyms:\nbuilding, roof\nroad")
        layout.addWidget(self.prompt_edit)
        self.legend = QListWidget()
        self.legend.setMaximumHeight(110)
        layout.addWidget(self.legend)
        self.taught_row = QWidget()
        taught_layout = QHBoxLayout(self.taught_row)
        taught_layout.setContentsMargins(0, 0, 0, 0)
        self.taught_label = QLabel()
        self.taught_label.setWordWrap(True)
        self.taught_label.setStyleSheet("color: #1a6b1a")
        self.clear_taught_button = QPushButton("Clear")
        self.clear_taught_button.setToolTip("Forget the taught classes: segment by the class names only")
        taught_layout.addWidget(self.taught_label, 1)
        taught_layout.addWidget(self.clear_taught_button)
        self.taught_row.setVisible(False)
        self.clear_taught_button.clicked.connect(self.clear_taught)
        layout.addWidget(self.taught_row)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.taught_picker = TaughtPicker(self)
        form.addRow("Taught", self.taught_picker)
        self.threshold_spin = QDoubleSpinBox()
        self.threshold_spin.setRange(0.0, 0.99)
        self.threshold_spin.setSingleStep(0.05)
        self.threshold_spin.setSpecialValueText("off")
        self.threshold_spin.setToolTip("Pixels whose best class is less likely than this get no class (background)")
        form.addRow("Threshold", self.threshold_spin)
        layout.addLayout(form)
        self.set_combo.activated.connect(self._load_set)
        self._legend_timer = QTimer(self)
        self._legend_timer.setSingleShot(True)
        self._legend_timer.setInterval(LEGEND_DELAY_MS)
        self._legend_timer.timeout.connect(self._refresh_legend_if_online)
        self.prompt_edit.textChanged.connect(self._legend_timer.start)
        self.prompt_edit.textChanged.connect(self._classes_edited)
        return box

    def _input_box(self) -> QGroupBox:
        box = QGroupBox("Input")
        outer = QVBoxLayout(box)
        form = QFormLayout()
        outer.addLayout(form)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.layer_combo = QgsMapLayerComboBox()
        self.layer_combo.setFilters(QgsMapLayerProxyModel.Filter.RasterLayer)
        self.layer_combo.setMinimumContentsLength(10)
        form.addRow("Raster", self.layer_combo)
        self.scope_combo = QComboBox()
        self.scope_combo.addItems(SCOPES)
        form.addRow("Area", self.scope_combo)
        self.mask_combo = QgsMapLayerComboBox()
        self.mask_combo.setFilters(QgsMapLayerProxyModel.Filter.PolygonLayer)
        self.mask_combo.setMinimumContentsLength(10)
        form.addRow("Polygons", self.mask_combo)
        self.gsd_spin = QDoubleSpinBox()
        self.gsd_spin.setRange(0.0, 10000.0)
        self.gsd_spin.setDecimals(2)
        self.gsd_spin.setSpecialValueText("default (≥ 0.5 m)")
        self.gsd_spin.setSuffix(" m/px")
        form.addRow("Resolution", self.gsd_spin)
        self.band_chooser = BandChooser()
        form.addRow("Bands", self.band_chooser)
        self.layer_combo.layerChanged.connect(self.band_chooser.set_layer)
        self.band_chooser.set_layer(self.layer_combo.currentLayer())
        self.nodata_edit = NoDataEdit()
        form.addRow("No data", self.nodata_edit)
        self.folder_widget = QgsFileWidget()
        self.folder_widget.setStorageMode(QgsFileWidget.StorageMode.GetDirectory)
        self.folder_widget.setFilePath(default_output_folder())
        self.folder_widget.setToolTip("Results go here (default: a 'farslip' folder beside the saved project)")
        form.addRow("Save to", self.folder_widget)
        self.scores_check = QCheckBox("Per-class score raster")
        outer.addWidget(self.scores_check)
        self.upload_check = QCheckBox("Send a copy of the image")
        self.upload_check.setToolTip("Needed for remote engines; automatic for web and database layers")
        outer.addWidget(self.upload_check)
        return box

    # --- engine --------------------------------------------------------------------------------
    def client(self, timeout: float = 30.0):
        return self.engine_panel.client(timeout)

    def check_engine(self) -> None:
        """Ask the engine (off the UI thread); the status light and the model list follow its answer."""
        self.engine_panel.check()

    def toggle_local_engine(self) -> None:
        self.engine_panel.toggle_local_engine()

    def shut_down(self) -> None:
        """Before the plugin unloads: every task of the dock's tabs is cancelled and forgotten (none adds layers or
        touches a widget afterwards), the labelling tool is put down, the engine this QGIS started is stopped."""
        from qgis_farslip.background import sip

        setup = self.engine_panel.setup_dialog
        for task in (self.task, self.scenes_panel.task, self.labels_panel.task, self.engine_panel.download_task,
                     getattr(setup, "task", None)):
            if task is not None and not sip.isdeleted(task):
                task.detach()
        self._put_down_label_tool()
        self._legend_timer.stop()
        if self.engine_panel.local.running():
            self.engine_panel.local.stop(wait=True)

    def _refresh_legend_if_online(self) -> None:
        from qgis_farslip.background import sip

        if sip.isdeleted(self.engine_panel) or sip.isdeleted(self.prompt_edit):
            return  # (the panel is being taken down: its pending refresh has nothing to ask or show)
        if self.online:
            self.update_legend()

    def _set_status(self, ok: bool, text: str) -> None:
        self.engine_panel.set_status(ok, text)

    def update_legend(self) -> None:
        """Show the classes as the engine reads them, with their colours (asked off the UI thread)."""
        lines = prompt_sets.class_lines(self.prompt_edit.toPlainText())
        if not lines:
            self.legend.clear()
            return
        self._legend_asked += 1
        asked = self._legend_asked
        client = self.client(timeout=UI_TIMEOUT_S)
        run_async(lambda: client.prompts(lines), lambda classes: self._show_legend(asked, classes),
                  lambda exc: self._show_legend(asked, None, str(exc)), owner=self)

    def _show_legend(self, asked: int, classes, error: str | None = None) -> None:
        if asked != self._legend_asked:  # the user typed on since: a newer answer is coming
            return
        self.legend.clear()
        if classes is None:
            self.legend.addItem(error)
            return
        for c in classes:
            swatch = QPixmap(14, 14)
            swatch.fill(QColor(c["colour"]))
            self.legend.addItem(QListWidgetItem(QIcon(swatch), ", ".join(c["synonyms"])))

    # --- classes taught from labels (Labels tab, or a .classes.json chosen beside Taught) -----------
    def set_taught(self, taught) -> None:
        """Taught classes: the next segmentation names them (`@job:<id>` or their file); the class list
        becomes theirs."""
        self.taught = taught
        self.taught_gone = False  # set when the engine answered that it no longer has them
        if prompt_sets.class_lines(self.prompt_edit.toPlainText()) != taught.classes:
            self.prompt_edit.setPlainText("\n".join(taught.classes))
        where = f"\nsaved as {taught.path}" if taught.path else ""
        made = f"engine job {taught.job_id}" if taught.job_id else f"made with model {model_label(taught.model)}"
        self.taught_label.setToolTip(f"{made}; classes taught: {', '.join(taught.taught)}{where}")
        self.taught_row.setVisible(True)
        self.taught_picker.show_current(taught.path)
        self._show_taught_state()

    def clear_taught(self) -> None:
        """Back to the class names only."""
        self.taught = None
        self.taught_gone = False
        self.taught_label.clear()
        self.taught_row.setVisible(False)
        self.taught_picker.show_current(None)

    def taught_reference(self) -> str | None:
        """What the next run names after '@' (a file, sent to the engine, or a teach job), while the class list
        is still the one the classes were taught for."""
        if self.taught is None or prompt_sets.class_lines(self.prompt_edit.toPlainText()) != self.taught.classes:
            return None
        return self.taught.reference()

    def current_model(self) -> str:
        """The model a run uses: the Engine tab's Model, else the engine's default."""
        return self.model_combo.currentText().strip() or (self.engine_panel.models or {}).get("default", "")

    def _show_taught_state(self, _text: str = "") -> None:
        taught = self.taught
        if taught is None:
            return
        model = self.current_model()
        if prompt_sets.class_lines(self.prompt_edit.toPlainText()) != taught.classes:
            state = "not used: the classes above changed (teach again, or undo the edit)"
        elif self.taught_gone:  # kept when the model list or the classes are refreshed afterwards
            state = "gone from the engine (restarted?): teach again, or Clear"
        elif taught.model and model and taught.model != model:
            state = (f"made with model {model_label(taught.model)}, not the Engine tab's {model_label(model)}: the "
                     f"engine refuses them with another model — choose {model_label(taught.model)} as Model")
        else:
            state = "used by Segment, Classify grid and Label a region"
        self.taught_label.setText(f"{taught.describe()} — {state}")

    def _classes_edited(self) -> None:
        self._show_taught_state()

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
        if not path:
            return
        try:
            text = Path(path).read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            self.notify("critical", f"{Path(path).name} is not a UTF-8 text file: save it as UTF-8 (one class "
                                    "per line)")
            return
        except OSError as exc:
            self.notify("critical", f"cannot read {path} ({exc.strerror or exc})")
            return
        self.prompt_edit.setPlainText(text)

    def export_set(self, path: str | None = None) -> None:
        path = path or QFileDialog.getSaveFileName(self, "Export classes", "classes.txt", "Text (*.txt)")[0]
        if not path:
            return
        try:
            Path(path).write_text(self.prompt_edit.toPlainText().strip() + "\n", encoding="utf-8")
        except OSError as exc:
            self.notify("critical", f"cannot write {path} ({exc.strerror or exc}): choose another folder")

    # --- region labelling ----------------------------------------------------------------------
    def labeller(self):
        from qgis_farslip.labelling import RegionLabeller

        request = self.build_request()
        return RegionLabeller(self.client(), request)

    def toggle_label_tool(self, on: bool) -> None:
        from qgis_farslip.labelling import LabelMapTool

        if on:
            self._put_down_label_tool()
            self.label_tool = LabelMapTool(self.canvas, self.labeller, self.notify, self.mask_combo.currentLayer)
            self.canvas.setMapTool(self.label_tool)
        else:
            self._put_down_label_tool()

    def _put_down_label_tool(self) -> None:
        """The labelling tool leaves the canvas and is deleted: a question in flight is forgotten (its answer
        opens no dialog), an open ranking closes."""
        tool, self.label_tool = self.label_tool, None
        if tool is None:
            return
        tool.cancel()
        if tool.dialog is not None:
            tool.dialog.reject()
        self.canvas.unsetMapTool(tool)
        tool.deleteLater()

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

    def results_folder(self) -> Path:
        """Where runs put their folders: *Save to* as `outputs.results_folder` reads it."""
        return results_folder(self.folder_widget.filePath())

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
        return union.asWkt(), crs_text(layer.crs())

    def build_request(self) -> SegmentationRequest:
        """The Segment tab's request (Segment, Classify grid and Label a region use its taught classes)."""
        layer = self.layer_combo.currentLayer()
        if layer is None:
            raise EngineError("choose a raster layer")
        classes = prompt_sets.class_lines(self.prompt_edit.toPlainText())
        if not classes:
            raise EngineError("type at least one class")
        extent, crs = self.area(layer)
        mask_wkt, mask_crs = self.mask()
        raster = RasterSnapshot.of(layer)
        return SegmentationRequest(raster=raster, classes=classes, extent=extent, extent_crs=crs,
                                   gsd=self.gsd_spin.value() or None, model=self.model_combo.currentText() or None,
                                   threshold=self.threshold_spin.value() or None, mask_wkt=mask_wkt,
                                   mask_crs=mask_crs, upload=self.upload_check.isChecked(),
                                   scores=self.scores_check.isChecked(), bands=self.band_chooser.bands(),
                                   nodata=raster.nodata(self.nodata_edit.value()), taught=self.taught_reference())

    def run(self) -> SegmentTask | None:
        self.last_error = None
        try:
            request = self.build_request()
            check_request(engine_url(self.url_edit.text()), request)
        except EngineError as exc:
            self._fail(str(exc))
            return None
        if self.engine_panel.local.state == "stopping":
            self._fail("the engine is stopping: press Start engine once it has stopped, then Segment")
            return None
        if not self.online and self.engine_panel.can_start_for():
            self._start_engine_then_run()
            return None
        title = class_title(request.classes)
        self.task = SegmentTask(self.client(), request, str(self.results_folder()), title, on_done=self._finished)
        show_progress(self.task, self.progress)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def _start_engine_then_run(self) -> None:
        """On demand: the local engine is started, and the run begins once it answers."""
        self.run_when_ready = True
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.progress.setFormat("starting the engine…")
        self.engine_panel.toggle_local_engine()

    def _engine_online(self) -> None:
        if self.run_when_ready:
            self.run_when_ready = False
            self.run_button.setEnabled(True)
            self.run()

    def _engine_state(self, state: str, _text: str) -> None:
        if self.run_when_ready and state in ("died", "failed", "stopped"):
            self.run_when_ready = False
            self.run_button.setEnabled(True)
            self.cancel_button.setEnabled(False)
            self.progress.setFormat("the engine did not start")

    def cancel(self) -> None:
        if self.run_when_ready:
            self.run_when_ready = False
            self.engine_panel.local.stop()
            self.run_button.setEnabled(True)
            self.cancel_button.setEnabled(False)
            show_ended(self.progress, "cancelled")
            return
        if self.task is not None:
            self.progress.setFormat("%p% — cancelling…")
            self.task.cancel()

    def _finished(self, task: SegmentTask) -> None:
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if task.error == "cancelled":
            show_ended(self.progress, "cancelled")
            self.last_error = "cancelled"
            self.notify("info", f"{task.title}: cancelled")
        elif task.error:
            show_ended(self.progress, "failed")
            if task.error == FORGOTTEN_TEACH and self.taught is not None:
                self.taught_gone = True
                self._show_taught_state()
            self._fail(task.error)
        else:
            self.progress.setValue(100)
            self.progress.setFormat(f"done: {task.group_title}")
            self.last_segmentation = {"job": task.summary.get("job_id"), "folder": str(task.folder),
                                      "title": task.group_title}
            self.labels_panel.show_last_segmentation()
            self.notify(*done_message(task.title, task.summary, task.request.raster.name))

    def _fail(self, text: str) -> None:
        self.last_error = text
        self.notify("critical", text)
