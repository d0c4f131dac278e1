"""A local engine process started from QGIS: start on demand, ready when /v1/health answers, its log,
and a `state` that follows it (stopped → starting → ready → stopping → stopped, or died/failed with the reason).

The process is a QProcess (its output arrives through the event loop); health is polled off the UI
thread (`background.run_async`), so QGIS never waits on it.
"""

from __future__ import annotations

import re

from qgis.PyQt.QtCore import QObject, QProcess, QProcessEnvironment, QTimer, pyqtSignal

from qgis_farslip.background import run_async
from qgis_farslip.client import EngineClient, EngineError

LOG_LINES = 2000


class LocalEngine(QObject):
    """`stateChanged(state, text)`: state is "stopped", "starting", "ready", "stopping", "died" or "failed"."""

    stateChanged = pyqtSignal(str, str)
    logged = pyqtSignal(str)

    def __init__(self, parent=None, ready_timeout_s: float = 180.0, poll_ms: int = 500):
        super().__init__(parent)
        self.process: QProcess | None = None
        self.state, self.text = "stopped", "not started"
        self.log: list[str] = []
        self.url = ""
        self.ready_timeout_s = ready_timeout_s
        self._poll = QTimer(self)
        self._poll.setInterval(poll_ms)
        self._poll.timeout.connect(self._check_health)
        self._elapsed = 0.0
        self._asking = False
        self._stopping = False

    # --- state ---------------------------------------------------------------------------------
    def _set(self, state: str, text: str) -> None:
        self.state, self.text = state, text
        self.stateChanged.emit(state, text)

    def _append(self, text: str) -> None:
        for line in text.replace("\r", "\n").splitlines():
            if line.strip():
                self.log.append(line)
                self.logged.emit(line)
        del self.log[:-LOG_LINES]

    def running(self) -> bool:
        return self.process is not None and self.process.state() != QProcess.ProcessState.NotRunning

    # --- start / stop --------------------------------------------------------------------------
    def start(self, argv: list[str], url: str, env: dict | None = None) -> None:
        """Start `argv` (e.g. `[".../farslip", "serve", "--port", "8765"]`) and wait for `url` to answer."""
        if self.running():
            return
        self.url = url.rstrip("/")
        self.process = QProcess(self)
        self.process.setProcessChannelMode(QProcess.ProcessChannelMode.MergedChannels)
        if env:
            environment = QProcessEnvironment.systemEnvironment()
            for key, value in env.items():
                environment.insert(key, value)
            self.process.setProcessEnvironment(environment)
        self.process.readyReadStandardOutput.connect(self._read)
        self.process.finished.connect(self._finished)
        self.process.errorOccurred.connect(self._error)
        self._stopping = False
        self._append("$ " + " ".join(argv))
        self._set("starting", "starting the engine…")
        self._elapsed = 0.0
        self.process.start(argv[0], argv[1:])
        self._poll.start()

    def stop(self, wait: bool = False) -> None:
        """Ask the engine to stop (SIGTERM; killed if it still runs 10 s later). QGIS does not wait for it:
        the state is "stopping" until it has exited, then "stopped" — unless `wait` (the plugin unloading,
        QGIS closing): then it is stopped before this returns, killed after 3 s."""
        self._poll.stop()
        if not self.running():
            self.process = None
            self._set("stopped", "engine stopped")
            return
        self._stopping = True
        process = self.process
        process.terminate()
        if wait:
            if not process.waitForFinished(3_000):
                process.kill()
                process.waitForFinished(2_000)
            self.process = None
            if self.state != "stopped":  # (a Stop before this one may have seen it exit)
                self._set("stopped", "engine stopped")
            return
        kill = QTimer(process)  # goes with the process
        kill.setSingleShot(True)
        kill.timeout.connect(process.kill)
        kill.start(10_000)
        self._set("stopping", "stopping the engine…")

    # --- process events ------------------------------------------------------------------------
    def _read(self) -> None:
        if self.process is not None:
            self._append(bytes(self.process.readAllStandardOutput()).decode("utf-8", "replace"))

    def _error(self, error) -> None:
        if error == QProcess.ProcessError.FailedToStart and self.process is not None:
            self._poll.stop()
            self._append(f"cannot start: {self.process.errorString()}")
            self._set("failed", f"the engine could not be started ({self.process.errorString()}); "
                                "use Engine → Set up… to find or install it")

    def _finished(self, code: int, _status=None) -> None:
        self._poll.stop()
        self._read()
        if self._stopping:
            if self.state == "stopping":
                self.process.deleteLater()
                self.process = None
                self._set("stopped", "engine stopped")
            return
        last = self.log[-1] if self.log else ""
        self._append(f"engine exited with code {code}")
        if any("address already in use" in line.lower() for line in self.log[-20:]):
            port = self.url.rsplit(":", 1)[-1]
            self._set("died", f"port {port} is already in use (another engine already running?): press Check to "
                              "use that one, or put another port in the URL and press Set up… → Use it")
            return
        held = next((line for line in self.log[-20:] if "is in use by another engine" in line), None)
        if held is not None:  # (its data folder: one engine serves it)
            other = re.search(r"\((pid \d+), (https?://\S+?)\)", held)
            where = f" ({other.group(1)}, {other.group(2)})" if other else ""
            self._set("died", f"another FarSLIP engine already runs on this computer{where}: put its address in "
                              "the URL and press Check to use it, or stop it and press Start")
            return
        self._set("died", f"the engine stopped (exit code {code}): {last[:200]} — see Engine → Show log, then Start")

    # --- readiness -----------------------------------------------------------------------------
    def _check_health(self) -> None:
        self._elapsed += self._poll.interval() / 1000
        if self._elapsed > self.ready_timeout_s:
            self._poll.stop()
            self._set("failed", f"the engine did not answer within {self.ready_timeout_s:.0f} s; "
                                "see Engine → Show log (is the port already in use?)")
            return
        if self._asking:
            return
        self._asking = True
        client = EngineClient(self.url, "", timeout=2.0)
        run_async(client.health, self._healthy, self._not_yet, owner=self)

    def _healthy(self, health: dict) -> None:
        self._asking = False
        if self.state == "starting" and self.running():
            self._poll.stop()
            self._set("ready", f"ready: farslip {health.get('version', '?')} on {health.get('device', '?')}")

    def _not_yet(self, _error: EngineError) -> None:
        self._asking = False
