"""Engine set-up as a QgsTask: the commands of a `SetupPlan` run one after the other off the UI thread,
every output line goes to a visible log (signal `line`), progress moves with the steps, Cancel kills
the running command (reported as cancelled, see `tasks.py`). Nothing is installed into QGIS's own Python.
"""

from __future__ import annotations

import os
import subprocess
import time

from qgis.PyQt.QtCore import pyqtSignal

from qgis_farslip.client import EngineError
from qgis_farslip.engine_setup import SetupPlan, engine_at, env_command
from qgis_farslip.tasks import PluginTask


def run_logged(argv: list[str], on_line, is_cancelled, env: dict | None = None) -> int:
    """Run a command, passing each output line (stdout and stderr, `\\r` progress too) to `on_line`.

    Returns the exit code; -1 when cancelled (the command is killed).
    """
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                               stdin=subprocess.DEVNULL)
    fd = process.stdout.fileno()
    os.set_blocking(fd, False) if hasattr(os, "set_blocking") else None
    pending = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            chunk = None
        if chunk:
            pending += chunk
            *lines, pending = pending.replace(b"\r", b"\n").split(b"\n")
            for line in lines:
                if line.strip():
                    on_line(line.decode("utf-8", "replace"))
        elif chunk == b"":  # end of output
            break
        if is_cancelled():
            process.kill()
            process.wait()
            return -1
        if chunk is None:
            time.sleep(0.05)
    if pending.strip():
        on_line(pending.decode("utf-8", "replace"))
    return process.wait()


class EngineSetupTask(PluginTask):
    """Creates the engine's environment; `engine` is the installed engine once it succeeded, `error` says
    why not ("cancelled" when the user cancelled)."""

    line = pyqtSignal(str)
    per_project = False  # the engine's environment, whichever project is open

    def __init__(self, plan: SetupPlan, on_done=None):
        super().__init__("set up the engine", on_done)
        self.plan = plan
        self.engine = None
        self.log: list[str] = []

    def _emit(self, text: str) -> None:
        self.log.append(text)
        self.line.emit(text)

    def _stop(self, text: str) -> None:
        self._emit(text)
        raise EngineError(text)

    def work(self) -> None:  # worker thread
        steps = self.plan.steps()
        total = sum(s.weight for s in steps)
        done = 0.0
        for number, step in enumerate(steps, 1):
            self._emit(f"[{number}/{len(steps)}] {step.title}")
            self._emit("$ " + " ".join(step.argv))
            lines = 0

            def on_line(text: str, base=done, share=step.weight) -> None:
                nonlocal lines
                lines += 1
                self._emit(text)
                self.setProgress(100 * (base + share * min(0.9, lines / (lines + 20))) / total)

            try:
                code = run_logged(step.argv, on_line, self.isCanceled)
            except OSError as exc:
                self._stop(f"cannot run {step.argv[0]}: {exc}")
            if code == -1:
                self._stop("cancelled")
            if code != 0:
                last = next((ln for ln in reversed(self.log) if ln.strip() and not ln.startswith("$")), "")
                self._stop(f"engine set-up failed while trying to {step.title}: {last.strip()[:300]}")
            done += step.weight
            self.setProgress(100 * done / total)
        self.engine = engine_at(env_command(self.plan.env_dir))
        if self.engine is None:
            self._stop(f"the set-up finished but no engine command is in {self.plan.env_dir}")
        self._emit(f"engine ready: {self.engine.command} (farslip {self.engine.version or '?'})")
