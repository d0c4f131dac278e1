"""Downloading a model release from QGIS: `farslip models download NAME` of the local engine's own
environment, run in a QgsTask, its progress bar read from the output, failures put in GUI words.

(The engine has no download endpoint yet; with one, a remote engine could be asked to download too.)
"""

from __future__ import annotations

import re

from qgis.core import QgsTask
from qgis.PyQt.QtCore import pyqtSignal

from qgis_farslip.setup_task import run_logged

_PERCENT = re.compile(r"(\d{1,3})%\|")


def explain_download_error(name: str, output: list[str]) -> str:
    """One sentence for the message bar from the engine's output of a failed download."""
    text = " ".join(output[-5:])
    if "HF_HUB_OFFLINE" in text:
        return (f"cannot download {name}: downloads are switched off on this computer (HF_HUB_OFFLINE is set); "
                "unset it and restart QGIS, or choose a downloaded .pt file as Model")
    if "cannot be reached" in text or "download failed" in text:
        return (f"cannot download {name}: huggingface.co cannot be reached (no internet connection or a proxy); "
                "connect and press Download again, or download the .pt file in a browser and choose it as Model")
    if "unknown model" in text:
        return f"cannot download {name}: the engine does not know this model name; pick one from the list"
    last = next((line for line in reversed(output) if line.strip()), "no output")
    return f"cannot download {name}: {last.replace('farslip: error: ', '')[:300]}"


class ModelDownloadTask(QgsTask):
    """Downloads one release into the shared model cache; `error` is set when it failed."""

    line = pyqtSignal(str)

    def __init__(self, engine_argv: list[str], name: str, env: dict | None = None):
        """`engine_argv`: how the engine's command line is started (e.g. `[".../bin/farslip"]`)."""
        super().__init__(f"FarSLIP: download {name}", QgsTask.Flag.CanCancel)
        self.argv = [*engine_argv, "models", "download", name]
        self.name, self.env = name, env
        self.output: list[str] = []
        self.error: str | None = None

    def run(self) -> bool:  # worker thread
        def on_line(text: str) -> None:
            self.output.append(text)
            self.line.emit(text)
            match = _PERCENT.search(text)
            if match:
                self.setProgress(min(99.0, float(match.group(1))))

        try:
            code = run_logged(self.argv, on_line, self.isCanceled, env=self.env)
        except OSError as exc:
            self.error = f"cannot run the engine ({exc}); use Engine → Set up…"
            return False
        if code == -1:
            self.error = "cancelled"
            return False
        if code != 0:
            self.error = explain_download_error(self.name, self.output)
            return False
        self.setProgress(100)
        return True
