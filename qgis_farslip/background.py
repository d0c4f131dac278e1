"""Short engine calls off the UI thread: `run_async(fn, on_done, on_error)`.

`fn` runs on a worker thread of the plugin's own QThreadPool; `on_done(result)` or `on_error(EngineError)`
run back on the UI thread (queued signals). A call whose `owner` widget was deleted meanwhile is
dropped. Long jobs (segmentation) use QgsTask instead, so they show in QGIS's task manager.
"""

from __future__ import annotations

from qgis.core import Qgis, QgsMessageLog
from qgis.PyQt.QtCore import QObject, QRunnable, QThreadPool, pyqtSignal

from qgis_farslip.client import EngineError

try:
    from qgis.PyQt import sip
except ImportError:  # pragma: no cover
    import sip

_POOL = QThreadPool()
_POOL.setMaxThreadCount(4)
_LIVE: set = set()


class _Relay(QObject):
    done = pyqtSignal(object)
    failed = pyqtSignal(object)


class _Call(QRunnable):
    def __init__(self, fn, relay: _Relay):
        super().__init__()
        self.setAutoDelete(True)
        self.fn, self.relay = fn, relay

    def run(self) -> None:  # worker thread
        try:
            result = self.fn()
        except EngineError as exc:
            self._emit(self.relay, "failed", exc)
        except Exception as exc:  # never a traceback for the user; keep it in the log
            QgsMessageLog.logMessage(repr(exc), "FarSLIP", Qgis.MessageLevel.Critical)
            self._emit(self.relay, "failed", EngineError(f"unexpected error: {exc}"))
        else:
            self._emit(self.relay, "done", result)

    @staticmethod
    def _emit(relay, name: str, value) -> None:
        try:
            getattr(relay, name).emit(value)
        except RuntimeError:  # QGIS is closing and took the relay with it: nobody is waiting any more
            pass


def run_async(fn, on_done=None, on_error=None, owner: QObject | None = None) -> None:
    """Run `fn()` on a worker thread; hand its result or its EngineError to the UI thread."""
    relay = _Relay()
    _LIVE.add(relay)

    def alive() -> bool:
        return owner is None or not sip.isdeleted(owner)

    def finish(callback, value) -> None:
        _LIVE.discard(relay)
        if callback is not None and alive():
            callback(value)

    relay.done.connect(lambda value: finish(on_done, value))
    relay.failed.connect(lambda exc: finish(on_error, exc))
    _POOL.start(_Call(fn, relay))


def wait_all(timeout_ms: int = 30_000) -> bool:
    """Wait for the worker threads (plugin unload, tests)."""
    return _POOL.waitForDone(timeout_ms)
