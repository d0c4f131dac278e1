"""Background segmentation as a QgsTask: progress in QGIS's task manager, a cancel that stops the
engine job, layers added (on the main thread) only when every file has arrived."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from qgis.core import Qgis, QgsMessageLog, QgsTask

from qgis_farslip.client import EngineClient, EngineError
from qgis_farslip.jobs import SegmentationRequest, run_segmentation
from qgis_farslip.layers import add_result_group, segmentation_layers

LOG_TAG = "FarSLIP"


class SegmentTask(QgsTask):
    def __init__(self, client: EngineClient, request: SegmentationRequest, out_folder: str, title: str,
                 on_done: Callable[["SegmentTask"], None] | None = None):
        super().__init__(f"FarSLIP: {title}", QgsTask.Flag.CanCancel)
        self.client, self.request, self.title = client, request, title
        self.out_folder = str(Path(out_folder) / time.strftime("farslip_%Y%m%d_%H%M%S"))
        self.on_done = on_done
        self.summary: dict | None = None
        self.folder: Path | None = None
        self.error: str | None = None
        self.group = None

    def run(self) -> bool:  # worker thread: no GUI here
        try:
            self.summary, self.folder = run_segmentation(
                self.client, self.request, self.out_folder,
                on_progress=lambda p, msg: self.setProgress(100 * p), is_cancelled=self.isCanceled)
            return True
        except EngineError as exc:
            self.error = str(exc)
        except Exception as exc:  # never let a traceback reach the user; keep it in the log
            self.error = f"unexpected error: {exc}"
            QgsMessageLog.logMessage(repr(exc), LOG_TAG, Qgis.MessageLevel.Critical)
        return False

    def finished(self, result: bool) -> None:  # main thread
        if result and self.summary is not None:
            try:
                layers = segmentation_layers(self.folder, self.summary)
                self.group = add_result_group(f"FarSLIP {self.title} {time.strftime('%H:%M')}", layers)
            except ValueError as exc:
                self.error = str(exc)
        elif self.error is None and self.isCanceled():
            self.error = "cancelled"
        if self.error:
            QgsMessageLog.logMessage(self.error, LOG_TAG, Qgis.MessageLevel.Warning)
        if self.on_done is not None:
            self.on_done(self)
