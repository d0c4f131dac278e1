"""The plugin's QgsTasks: one base (`PluginTask`) that runs its work off the UI thread with a one-line
error ("cancelled" when the user cancelled, a traceback only in the log) and ends on the main thread;
segmentation (`SegmentTask`: progress and what is happening — "loading the model…" — in the dock and the
task manager, layers added only when every file has arrived) and the shorter engine jobs (`JobTask`).

A cancel is never reported by QGIS as a failure: QGIS 3.26+ is told so by the Silent flag; before 3.26
(no such flag) QGIS notifies "Task failed" for any terminated task that ran 5 s or more, so there a
cancelled task ends as completed and the plugin says "cancelled" itself.
"""

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
CANCELLED = "cancelled"
_SILENT = getattr(QgsTask.Flag, "Silent", None)  # QGIS 3.26+
FLAGS = QgsTask.Flag.CanCancel | (_SILENT if _SILENT is not None else QgsTask.Flag(0))


def show_progress(task: "PluginTask", bar, prefix: str = "") -> None:
    """`bar` (a QProgressBar) follows `task`: its percentage, and what is happening as "PREFIX%p% — text"
    (starting at 0 % — "starting…")."""
    task.progressChanged.connect(lambda p: bar.setValue(int(p)))
    task.message.connect(lambda text: bar.setFormat(f"{prefix}%p% — {text}"))
    bar.setValue(0)
    bar.setFormat(f"{prefix}%p% — starting…")


def show_ended(bar, text: str) -> None:
    """`bar` (a QProgressBar) after a run that did not finish ("cancelled", "failed"): empty, saying so —
    not a full bar that reads as done."""
    bar.setValue(0)
    bar.setFormat(text)


def describe(progress: float, message: str) -> str:
    """The engine's job status in words a user understands."""
    if message in ("", "queued"):
        return "waiting for the engine…"
    if message == "starting" or (progress == 0 and message.endswith(" crops") and message.startswith("0/")):
        return "loading the model…"
    if message.endswith(" crops"):
        return f"segmenting ({message})"
    return message


_projects = {"opened": 0, "watching": False}


def project_generation() -> int:
    """How many times the project was cleared (another opened, or a new one started) since the plugin began
    to count: a task's results belong to the project it started in."""
    if not _projects["watching"]:
        from qgis.core import QgsProject

        QgsProject.instance().cleared.connect(lambda: _projects.__setitem__("opened", _projects["opened"] + 1))
        _projects["watching"] = True
    return _projects["opened"]


class PluginTask(QgsTask):
    """`work()` runs on the worker thread; `succeeded()` (when it finished, in the project it started in) and
    then `on_done(task)` on the main thread, with `error` None, "cancelled", or one sentence for the message
    bar."""

    message = pyqtSignal(str)  # what is happening now, for the dock
    per_project = True  # its results belong to the project it started in (not so: setting up the engine)

    def __init__(self, title: str, on_done: Callable | None = None):
        super().__init__(f"FarSLIP: {title}", FLAGS)
        self.title, self.on_done = title, on_done
        self.error: str | None = None
        self.project = project_generation()  # its results go into this project, or nowhere

    def work(self) -> None:  # worker thread: no GUI here
        raise NotImplementedError

    def succeeded(self) -> None:  # main thread, after `work` finished; may set `error`
        pass

    def cancel(self) -> None:
        self.setDescription(f"{self.description()} — {CANCELLED}")
        super().cancel()

    def detach(self) -> None:
        """The plugin is unloading: the task is cancelled and tells nobody (its widgets are being deleted)."""
        self.on_done = None
        for signal in (self.progressChanged, self.message, getattr(self, "line", None)):
            try:
                signal.disconnect()
            except (TypeError, AttributeError):  # nothing connected; no such signal
                pass
        self.cancel()

    def run(self) -> bool:  # worker thread
        try:
            self.work()
            return True
        except EngineError as exc:
            self.error = CANCELLED if self.isCanceled() else str(exc)
        except Exception as exc:  # noqa: BLE001 — never a traceback for the user; it goes to the log
            self.error = f"unexpected error: {exc}"
            QgsMessageLog.logMessage(repr(exc), LOG_TAG, Qgis.MessageLevel.Critical)
        return self.error == CANCELLED and _SILENT is None  # before 3.26: a cancel is not a failure to QGIS

    def finished(self, result: bool) -> None:  # main thread
        try:
            moved = self.per_project and project_generation() != self.project
            if result and self.error is None and not self.isCanceled() and moved:
                folder = getattr(self, "folder", None)
                self.error = ("another project was opened while this ran: its results were not added to it"
                              + (f" (they are in {folder})" if folder else ""))
            elif result and self.error is None and not self.isCanceled():
                self.succeeded()
            elif self.error is None:
                self.error = CANCELLED if self.isCanceled() else "failed"
        except Exception as exc:  # noqa: BLE001 — the dock is told and set free whatever happened
            self.error = f"unexpected error: {exc}"
            QgsMessageLog.logMessage(repr(exc), LOG_TAG, Qgis.MessageLevel.Critical)
        if self.error:
            level = Qgis.MessageLevel.Info if self.error == CANCELLED else Qgis.MessageLevel.Warning
            QgsMessageLog.logMessage(f"{self.title}: {self.error}", LOG_TAG, level)
        if self.on_done is not None:
            self.on_done(self)


class SegmentTask(PluginTask):
    def __init__(self, client: EngineClient, request: SegmentationRequest, out_folder: str, title: str,
                 on_done: Callable[["SegmentTask"], None] | None = None):
        super().__init__(title, on_done)
        self.client, self.request = client, request
        self.started = time.time()
        raster = request.raster.name
        self.out_folder = str(Path(out_folder) / run_folder_name(raster, request.classes, self.started))
        self.group_title = run_title(raster, request.classes, self.started)
        self.summary: dict | None = None
        self.folder: Path | None = None
        self.group = None

    def work(self) -> None:
        def on_progress(p: float, msg: str) -> None:
            self.setProgress(100 * p)
            self.message.emit(describe(p, msg))

        self.message.emit("preparing the request…")
        self.summary, self.folder = run_segmentation(
            self.client, self.request, self.out_folder, on_progress=on_progress, is_cancelled=self.isCanceled,
            on_stage=self.message.emit)

    def succeeded(self) -> None:
        try:
            layers = segmentation_layers(self.folder, self.summary, self.request.raster.name, self.started)
            self.group = add_result_group(self.group_title, layers)
        except ValueError as exc:
            self.error = str(exc)


class JobTask(PluginTask):
    """A shorter engine job (teach, accuracy) as a QgsTask: `job(on_progress, is_cancelled, on_stage)` runs
    on the worker thread and returns the result; `on_done(task)` runs on the main thread with `result` or
    `error` ("cancelled" when the user cancelled)."""

    def __init__(self, title: str, job: Callable, on_done: Callable[["JobTask"], None] | None = None,
                 doing: str = "working"):
        super().__init__(title, on_done)
        self.job, self.doing = job, doing
        self.result = None

    def work(self) -> None:
        def on_progress(p: float, msg: str) -> None:
            self.setProgress(100 * p)
            self.message.emit(describe(p, msg).replace("segmenting (", f"{self.doing} ("))

        self.message.emit("preparing the request…")
        self.result = self.job(on_progress, self.isCanceled, self.message.emit)
