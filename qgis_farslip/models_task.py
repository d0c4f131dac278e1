"""Downloading a model release from QGIS through the engine (`POST /v1/models/{name}/download`): the
engine fetches it into its own model cache — on this computer or on the one it runs on — as a job that a
QgsTask follows (progress "0.12/0.25 MB", a cancel stops the job on the engine and keeps nothing);
failures (offline, no disk space, a name the engine does not know) in GUI words."""

from __future__ import annotations

import re

from qgis_farslip.client import EngineClient, EngineError
from qgis_farslip.tasks import PluginTask

_SIZE = re.compile(r"/(\d+(?:\.\d+)?) MB$")


def explain_download_error(name: str, message: str, where: str = "the engine's computer",
                           size: str | None = None) -> str:
    """One sentence for the message bar from the engine's message about a failed download (`where`: the
    computer the engine runs on, in words; `size`: the file's size when known, "600 MB")."""
    text = message.removeprefix("engine: ")
    if "HF_HUB_OFFLINE" in text:
        return (f"cannot download {name}: the engine was started with downloads switched off (HF_HUB_OFFLINE): "
                "start it without that setting, or type the path of a downloaded .pt file as Model")
    if "No space left" in text or "Errno 28" in text or "Disk quota" in text:
        need = f" (it needs {size})" if size else ""
        return (f"cannot download {name}: the disk of {where} is full{need}: free some space there and press "
                "Download model again")
    if "Permission denied" in text or "Read-only file system" in text:
        return (f"cannot download {name}: the engine may not write its model cache on {where} (set HF_HOME to a "
                "folder it can write and restart it)")
    if "cannot be reached" in text or "download failed" in text:
        return (f"cannot download {name}: {where} cannot reach huggingface.co (no internet connection, or a "
                "proxy): connect it and press Download model again, or download the .pt file in a browser and "
                "type its path as Model")
    if "unknown model" in text:
        return f"cannot download {name}: the engine does not know this model name; pick one from the list"
    if "does not exist on the Hub" in text:
        return f"cannot download {name}: its file is no longer on huggingface.co; update the plugin and the engine"
    return f"cannot download {name}: {text.split('; ')[0][:300]}"


class ModelDownloadTask(PluginTask):
    """Has the engine download one release; `cached` afterwards, `error` when it failed ("cancelled" when the
    user cancelled)."""

    per_project = False  # the engine's model cache, whichever project is open

    def __init__(self, client: EngineClient, name: str, where: str = "the engine's computer", on_done=None):
        super().__init__(f"download {name}", on_done)
        self.client, self.name, self.where = client, name, where
        self.size: str | None = None
        self.cached = False

    def work(self) -> None:  # worker thread
        def on_progress(p: float, msg: str) -> None:
            found = _SIZE.search(msg)
            if found:
                self.size = f"{float(found.group(1)):g} MB"
            self.setProgress(100 * p)
            self.message.emit("waiting for the engine…" if msg in ("", "queued") else msg)

        self.message.emit("asking the engine…")
        try:
            job = self.client.download_model(self.name)
            status = self.client.wait(job, on_progress, self.isCanceled) if job else {"state": "done"}
        except EngineError as exc:
            if "not answering" in str(exc) or "refused the token" in str(exc):
                raise
            raise EngineError(explain_download_error(self.name, str(exc), self.where)) from None
        if status["state"] == "cancelled":
            raise EngineError("cancelled")
        if status["state"] != "done":
            raise EngineError(explain_download_error(self.name, status["message"], self.where, self.size))
        self.cached = True
        self.setProgress(100)
