"""Background segmentation as a QgsTask: progress and what is happening ("loading the model…") in the
dock and the task manager, a cancel that stops the engine job and is reported as cancelled, layers
added (on the main thread) only when every file has arrived."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from qgis.core import Qgis, QgsMessageLog, QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from qgis_farslip.client import EngineClient, EngineError
from qgis_farslip.jobs import SegmentationRequest, run_segmentation
from qgis_farslip.layers import add_result_group, segmentation_layers
from qgis_farslip.outputs import run_folder_name, run_title

LOG_TAG = "FarSLIP"
# QGIS 3.26+: no operating-system "Task failed" notification for a task the user cancelled
_FLAGS = QgsTask.Flag.CanCancel | getattr(QgsTask.Flag, "Silent", QgsTask.Flag(0))


def describe(progress: float, message: str) -> str:
    """The engine's job status in words a user understands."""
    if message in ("", "queued"):
        return "waiting for the engine…"
    if message == "starting" or (progress == 0 and message.endswith(" crops") and message.startswith("0/")):
        return "loading the model…"
    if message.endswith(" crops"):
        return f"segmenting ({message})"
    return message


def run_guarded(task: QgsTask, work: Callable[[], None]) -> bool:
    """A task's `run` on the worker thread: True when `work` finished; else `task.error` says why in one
    line ("cancelled" when the user cancelled) and a traceback only reaches the log, never the user."""
    try:
        task.message.emit("preparing the request…")
        work()
        return True
    except EngineError as exc:
        task.error = "cancelled" if task.isCanceled() else str(exc)
    except Exception as exc:  # noqa: BLE001
        task.error = f"unexpected error: {exc}"
        QgsMessageLog.logMessage(repr(exc), LOG_TAG, Qgis.MessageLevel.Critical)
    return False


class SegmentTask(QgsTask):
    message = pyqtSignal(str)  # what is happening now, for the dock

    def __init__(self, client: EngineClient, request: SegmentationRequest, out_folder: str, title: str,
                 on_done: Callable[["SegmentTask"], None] | None = None):
        super().__init__(f"FarSLIP: {title}", _FLAGS)
        self.client, self.request, self.title = client, request, title
        self.started = time.time()
        raster = request.layer.name()
        self.out_folder = str(Path(out_folder) / run_folder_name(raster, request.classes, self.started))
        self.group_title = run_title(raster, request.classes, self.started)
        self.on_done = on_done
        self.summary: dict | None = None
        self.folder: Path | None = None
        self.error: str | None = None
        self.cancelled = False
        self.group = None

    def cancel(self) -> None:
        self.cancelled = True
        self.setDescription(f"{self.description()} — cancelled")
        super().cancel()

    def run(self) -> bool:  # worker thread: no GUI here
        def on_progress(p: float, msg: str) -> None:
            self.setProgress(100 * p)
            self.message.emit(describe(p, msg))

        def work() -> None:
            self.summary, self.folder = run_segmentation(
                self.client, self.request, self.out_folder, on_progress=on_progress, is_cancelled=self.isCanceled,
                on_stage=self.message.emit)

        return run_guarded(self, work)

    def finished(self, result: bool) -> None:  # main thread
        if result and self.summary is not None:
            try:
                layers = segmentation_layers(self.folder, self.summary, self.request.layer.name(), self.started)
                self.group = add_result_group(self.group_title, layers)
            except ValueError as exc:
                self.error = str(exc)
        elif self.error is None and self.isCanceled():
            self.error = "cancelled"
        if self.error:
            level = Qgis.MessageLevel.Info if self.error == "cancelled" else Qgis.MessageLevel.Warning
            QgsMessageLog.logMessage(f"{self.title}: {self.error}", LOG_TAG, level)
        if self.on_done is not None:
            self.on_done(self)


class JobTask(QgsTask):
    """A shorter engine job (teach, accuracy) as a QgsTask: `work(on_progress, is_cancelled, on_stage)` runs
    on the worker thread and returns the result; `on_done(task)` runs on the main thread with `result` or
    `error` ("cancelled" when the user cancelled)."""

    message = pyqtSignal(str)

    def __init__(self, title: str, work: Callable, on_done: Callable[["JobTask"], None] | None = None,
                 doing: str = "working"):
        super().__init__(f"FarSLIP: {title}", _FLAGS)
        self.title, self.work, self.on_done, self.doing = title, work, on_done, doing
        self.result = None
        self.error: str | None = None

    def run(self) -> bool:  # worker thread: no GUI here
        def on_progress(p: float, msg: str) -> None:
            self.setProgress(100 * p)
            self.message.emit(describe(p, msg).replace("segmenting (", f"{self.doing} ("))

        def work() -> None:
            self.result = self.work(on_progress, self.isCanceled, self.message.emit)

        return run_guarded(self, work)

    def finished(self, result: bool) -> None:  # main thread
        if not result and self.error is None:
            self.error = "cancelled" if self.isCanceled() else "failed"
        if self.error:
            level = Qgis.MessageLevel.Info if self.error == "cancelled" else Qgis.MessageLevel.Warning
            QgsMessageLog.logMessage(f"{self.title}: {self.error}", LOG_TAG, level)
        if self.on_done is not None:
            self.on_done(self)
