"""The "Set up the FarSLIP engine" dialog: use an engine already installed, or create its own environment
(Python, install folder, package source, CPU/CUDA torch, extra pip options) with progress and a live log.
"""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import pyqtSignal
from qgis.PyQt.QtWidgets import (QComboBox, QDialog, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit,
                                 QPlainTextEdit, QProgressBar, QPushButton, QToolButton, QVBoxLayout)

from qgis_farslip.background import run_async
from qgis_farslip.engine_setup import (TORCH_CHOICES, Engine, SetupPlan, default_env_dir, default_source, find_engine,
                                       find_pythons, has_cuda, python_version)


def usable_pythons() -> list[str]:
    """The interpreters found that can create the engine's environment (checked off the UI thread)."""
    return [python for python in find_pythons() if not python_version(python)[1]]
from qgis_farslip.setup_task import EngineSetupTask

TORCH_LABELS = {"auto": "automatic", "cpu": "CPU", "cuda": "CUDA (NVIDIA GPU)", "none": "from the package source"}


class EngineSetupDialog(QDialog):
    """Emits `engineReady(Engine)` when an engine was found and chosen, or installed."""

    engineReady = pyqtSignal(object)

    def __init__(self, configured: str | None = None, parent=None):
        super().__init__(parent)
        self.setWindowTitle("Set up the FarSLIP engine")
        self.task: EngineSetupTask | None = None
        self.running = False  # its set-up task runs
        self.found: Engine | None = None
        layout = QVBoxLayout(self)
        intro = QLabel("The engine runs in its own Python environment, apart from QGIS. Use one already "
                       "installed, or let the plugin create one (downloads about 1–3 GB).")
        intro.setWordWrap(True)
        layout.addWidget(intro)
        row = QHBoxLayout()
        self.found_label = QLabel("looking for an installed engine…")
        self.found_label.setWordWrap(True)
        self.use_button = QPushButton("Use it")
        self.use_button.setEnabled(False)
        row.addWidget(self.found_label, 1)
        row.addWidget(self.use_button)
        layout.addLayout(row)
        form = QFormLayout()
        self.python_combo = QComboBox()
        self.python_combo.setEditable(True)
        self.python_combo.lineEdit().setPlaceholderText("looking for Python 3.10+…")
        form.addRow("Python", self._with_browse(self.python_combo, "Choose a Python 3.10+ interpreter",
                                                 self.python_combo.setEditText))
        self.folder_edit = QLineEdit(str(default_env_dir()))
        form.addRow("Install into", self.folder_edit)
        self.source_edit = QLineEdit(default_source())
        self.source_edit.setToolTip("A source folder, a wheel file, or a name on the package index ('farslip')")
        form.addRow("Engine package", self._with_browse(self.source_edit, "Choose the engine wheel",
                                                         self.source_edit.setText, "Wheels (*.whl)"))
        self.torch_combo = QComboBox()
        for choice in TORCH_CHOICES:
            self.torch_combo.addItem(TORCH_LABELS[choice], choice)
        form.addRow("PyTorch", self.torch_combo)
        self.pip_edit = QLineEdit()
        self.pip_edit.setPlaceholderText("e.g. --no-index --find-links /path/to/wheels (offline)")
        form.addRow("pip options", self.pip_edit)
        layout.addLayout(form)
        self.progress = QProgressBar()
        layout.addWidget(self.progress)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(5000)
        layout.addWidget(self.log_view, 1)
        buttons = QHBoxLayout()
        self.install_button = QPushButton("Create the engine environment")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        close = QPushButton("Close")
        for button in (self.install_button, self.cancel_button, close):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.install_button.clicked.connect(self.install)
        self.cancel_button.clicked.connect(self.cancel)
        self.use_button.clicked.connect(self.use_found)
        close.clicked.connect(self.reject)
        self.error: str | None = None
        run_async(lambda: (find_engine(configured), has_cuda(), usable_pythons()), self._found, owner=self)

    def _with_browse(self, field, title: str, set_value, filters: str = ""):
        """`field` with a "…" button that picks a file for it."""
        row = QHBoxLayout()
        row.addWidget(field, 1)
        button = QToolButton()
        button.setText("…")
        button.setToolTip(title)
        button.clicked.connect(lambda: (lambda path: path and set_value(path))(
            QFileDialog.getOpenFileName(self, title, "", filters)[0]))
        row.addWidget(button)
        return row

    def _found(self, result) -> None:
        engine, cuda, pythons = result
        typed = self.python_combo.currentText()
        self.python_combo.addItems(pythons)
        self.python_combo.setEditText(typed or (pythons[0] if pythons else ""))
        if not pythons:
            self.python_combo.lineEdit().setPlaceholderText("no Python 3.10+ found: choose one with …")
        self.torch_combo.setItemText(0, f"automatic ({'CUDA' if cuda else 'CPU'} on this computer)")
        self.found = engine
        if engine is None:
            self.found_label.setText("No engine found on this computer: create one below.")
            return
        self.found_label.setText(f"Found: {engine.command} (farslip {engine.version or 'version unknown'})")
        self.use_button.setEnabled(True)

    def use_found(self) -> None:
        if self.found is not None:
            self.engineReady.emit(self.found)
            self.accept()

    def plan(self) -> SetupPlan:
        return SetupPlan(python=self.python_combo.currentText().strip(), env_dir=Path(self.folder_edit.text().strip()),
                         source=self.source_edit.text().strip(), torch=self.torch_combo.currentData(),
                         pip_args=self.pip_edit.text().split())

    def install(self) -> EngineSetupTask | None:
        """Check the Python, then run the set-up in a QgsTask (the checks run off the UI thread too)."""
        plan = self.plan()
        self.error = None
        self.install_button.setEnabled(False)
        self.log_view.appendPlainText(f"checking {plan.python}…")
        run_async(lambda: python_version(plan.python), lambda result: self._start(plan, result), owner=self)
        return None

    def _start(self, plan: SetupPlan, checked) -> None:
        _version, problem = checked
        if problem:
            self._failed(problem)
            return
        self.task = EngineSetupTask(plan, on_done=self._ended)
        self.running = True
        self.task.line.connect(self.log_view.appendPlainText)
        self.task.progressChanged.connect(lambda p: self.progress.setValue(int(p)))
        self.cancel_button.setEnabled(True)
        QgsApplication.taskManager().addTask(self.task)

    def _ended(self, task: EngineSetupTask) -> None:
        self.running = False
        if task.error:
            self._failed(task.error)
        else:
            self._completed()

    def _completed(self) -> None:
        self.cancel_button.setEnabled(False)
        self.progress.setValue(100)
        self.found = self.task.engine
        self.found_label.setText(f"Installed: {self.found.command} — close this and press Start engine")
        self.engineReady.emit(self.found)

    def _failed(self, text: str) -> None:
        self.error = text
        self.log_view.appendPlainText(text)
        self.install_button.setEnabled(True)
        self.cancel_button.setEnabled(False)

    def installing(self) -> bool:
        """Whether its set-up task is still running (the dialog may have been closed meanwhile)."""
        return self.running

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
