"""The dock's "Scenes & search" tab: scene classification on a grid of cells and text search, on the raster,
area and classes chosen in the Segment tab (the grid with its taught classes, when a taught file or teach
job is in use there). Each run is a QgsTask (progress, cancel reported as cancelled); results load styled
in a group named after the run, on top of earlier results."""

from __future__ import annotations

import tempfile
import time

from qgis.core import QgsApplication, QgsRasterLayer, QgsVectorLayer
from qgis.PyQt.QtWidgets import (QDoubleSpinBox, QFormLayout, QGroupBox, QHBoxLayout, QLineEdit, QProgressBar,
                                 QPushButton, QSpinBox, QVBoxLayout, QWidget)

from qgis_farslip.client import EngineError, engine_url
from qgis_farslip.jobs import area_payload, check_request, clip_extent, forget_upload, run_job
from qgis_farslip.layers import add_result_group
from qgis_farslip.outputs import class_title, done_message, run_folder_name
from qgis_farslip.processing_provider import styles
from qgis_farslip.tasks import PluginTask, show_ended
from qgis_farslip.taught_refs import with_taught


class EngineJobTask(PluginTask):
    """A grid or search job: the area's payload, the job, its files; when done the layers load."""

    def __init__(self, client, kind: str, request, extra: dict, out_folder: str, title: str, on_done):
        super().__init__(title, on_done)
        self.client, self.kind, self.request, self.extra = client, kind, request, extra
        self.out_folder = out_folder
        self.summary = self.folder = self.group = None

    def work(self) -> None:  # worker thread
        r = self.request
        extent = clip_extent(r.raster, r.extent, r.extent_crs)
        with tempfile.TemporaryDirectory(prefix="farslip-qgis-") as scratch:
            payload = area_payload(self.client, r.raster, extent, r.raster.crs, r.gsd, scratch, r.upload)
        for key in ("model", "bands", "nodata", "mask_wkt", "mask_crs"):  # as the Segment tab's
            if getattr(r, key) is not None:
                payload[key] = getattr(r, key)
        payload.update(self.extra)
        taught = r.taught if "classes" in payload else None  # a search has no classes
        try:
            self.summary, self.folder = with_taught(self.client, taught, payload, lambda body: run_job(
                self.client, self.kind, body, self.out_folder, lambda p, _m: self.setProgress(100 * p),
                self.isCanceled))
        finally:
            forget_upload(self.client, payload)

    def succeeded(self) -> None:  # main thread
        try:
            self.group = add_result_group(self.title, self.layers())
        except ValueError as exc:
            self.error = str(exc)

    def layers(self) -> list:
        files, stamp = self.summary["files"], time.strftime("%H:%M:%S")
        if self.kind == "grid":
            grid = QgsVectorLayer(f"{self.folder / files['grid']}|layername=grid", f"Scene grid · {stamp}", "ogr")
            styles.categorized(self.summary["classes"], "grid")(grid)
            return [grid]
        layers = []
        boxes = QgsVectorLayer(f"{self.folder / files['boxes']}|layername=boxes", f"Search boxes · {stamp}", "ogr")
        styles.boxes(boxes)
        layers.append(boxes)
        if "heatmap" in files:
            heat = QgsRasterLayer(str(self.folder / files["heatmap"]), f"Heat map · {stamp}", "gdal")
            styles.heatmap(heat)
            layers.append(heat)
        return layers


class ScenesPanel(QWidget):
    def __init__(self, dock, parent=None):
        super().__init__(parent)
        self.dock = dock
        self.task: EngineJobTask | None = None
        layout = QVBoxLayout(self)
        grid_box = QGroupBox("Classify scenes on a grid")
        grid_box.setToolTip("Each cell gets the most likely of the classes in the Segment tab (taught from labels, "
                            "when a taught file is chosen there)")
        grid_form = QFormLayout(grid_box)
        self.cell_spin = QDoubleSpinBox()
        self.cell_spin.setRange(1.0, 100_000.0)
        self.cell_spin.setValue(100.0)
        self.cell_spin.setSuffix(" m")
        grid_form.addRow("Cell size", self.cell_spin)
        self.grid_button = QPushButton("Classify grid")
        grid_form.addRow(self.grid_button)
        layout.addWidget(grid_box)
        search_box = QGroupBox("Search imagery by text")
        search_form = QFormLayout(search_box)
        self.query_edit = QLineEdit("a swimming pool next to a house")
        search_form.addRow("Query", self.query_edit)
        self.top_spin = QSpinBox()
        self.top_spin.setRange(1, 1000)
        self.top_spin.setValue(10)
        search_form.addRow("Boxes", self.top_spin)
        self.search_button = QPushButton("Search")
        search_form.addRow(self.search_button)
        layout.addWidget(search_box)
        row = QHBoxLayout()
        self.progress = QProgressBar()
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        row.addWidget(self.progress, 1)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        layout.addStretch(1)
        self.grid_button.clicked.connect(self.classify_grid)
        self.search_button.clicked.connect(self.search)
        self.cancel_button.clicked.connect(lambda: self.task is not None and self.task.cancel())

    def classify_grid(self) -> EngineJobTask | None:
        return self._start("grid", lambda request: (
            {"classes": request.classes, "cell_m": self.cell_spin.value()},
            f"grid of {class_title(request.classes)}{' (taught)' if request.taught else ''}"))

    def search(self) -> EngineJobTask | None:
        query = self.query_edit.text().strip()
        if not query:
            self.dock.notify("critical", "type what to search for under Query")
            return None
        return self._start("search", lambda request: ({"query": query, "top_k": self.top_spin.value()},
                                                      f"search “{query}”"))

    def _start(self, kind: str, make) -> EngineJobTask | None:
        try:
            request = self.dock.build_request()
            check_request(engine_url(self.dock.url_edit.text()), request)
        except EngineError as exc:
            self.dock.notify("critical", str(exc))
            return None
        extra, what = make(request)
        title = f"{request.raster.name} — {what} ({time.strftime('%H:%M:%S')})"
        folder = self.dock.results_folder() / run_folder_name(request.raster.name, [kind])
        self.task = EngineJobTask(self.dock.client(), kind, request, extra, str(folder), title, self._finished)
        self.task.progressChanged.connect(lambda p: self.progress.setValue(int(p)))
        for button in (self.grid_button, self.search_button):
            button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.progress.setFormat("%p%")
        QgsApplication.taskManager().addTask(self.task)
        return self.task

    def _finished(self, task: EngineJobTask) -> None:
        for button in (self.grid_button, self.search_button):
            button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if task.error == "cancelled":
            show_ended(self.progress, "cancelled")
            self.dock.notify("info", f"{task.title}: cancelled")
        elif task.error:
            show_ended(self.progress, "failed")
            self.dock.notify("critical", task.error)
        else:
            self.progress.setValue(100)
            self.dock.notify(*done_message(task.title, task.summary, task.request.raster.name))
