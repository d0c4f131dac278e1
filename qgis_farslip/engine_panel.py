"""The dock's "Engine" tab: status light, URL and token, the local engine (set up, start/stop, log),
models (downloaded or not; the engine downloads one, with progress and cancel, see `models_task.py`).
Every engine call runs off the UI thread.
"""

from __future__ import annotations

import shlex
from urllib.parse import urlparse

from qgis.core import QgsApplication
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import (QComboBox, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem,
                                 QPlainTextEdit, QProgressBar, QPushButton, QVBoxLayout, QWidget)

from qgis_farslip.background import run_async, sip
from qgis_farslip.client import LOCAL_HOSTS, EngineClient, EngineError, engine_url, is_local_engine
from qgis_farslip.local_engine import LocalEngine
from qgis_farslip.settings import engine_settings, save_engine_command, save_engine_settings
from qgis_farslip.tasks import show_progress

UI_TIMEOUT_S = 5.0
COLOURS = {True: "#2a2", False: "#c22", None: "#d90"}  # online, offline, starting


def serve_command(engine_command: str, url: str) -> str:
    port = urlparse(url).port or 8765
    return f"{shlex.quote(engine_command)} serve --port {port}"


def command_words(command: str) -> list[str]:
    """The words of a start command as a shell splits them; EngineError for one a shell could not run
    (an unbalanced quote)."""
    try:
        return shlex.split(command)
    except ValueError as exc:
        raise EngineError(f"the engine's start command cannot be read ({exc}): correct it under Engine → Start "
                          "command, or press Set up… to find the engine") from None


def engine_prefix(command: str) -> list[str]:
    """The part of a start command before `serve` (the engine's command line itself)."""
    argv = command_words(command)
    return argv[:argv.index("serve")] if "serve" in argv else argv[:1]


class EnginePanel(QWidget):
    def __init__(self, notify, parent=None):
        super().__init__(parent)
        self.notify = notify
        self.online = False
        self.checking = False
        self.unreachable = False
        self._asked = 0
        self.models: dict | None = None
        self.on_online = []  # callbacks when the engine answers
        settings = engine_settings()
        layout = QVBoxLayout(self)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.status_light = QLabel("●")
        self.status_text = QLabel("not checked")
        self.status_text.setWordWrap(True)
        self.status_text.setMinimumWidth(120)
        self.check_button = QPushButton("Check")
        status_row = QHBoxLayout()
        status_row.addWidget(self.status_light)
        status_row.addWidget(self.status_text, 1)
        status_row.addWidget(self.check_button)
        layout.addLayout(status_row)  # full width: a wrapped status line keeps its own height
        self.url_edit = QLineEdit(settings["url"])
        self.url_edit.setPlaceholderText("http://127.0.0.1:8765")
        # typed without http:// or with the API's /v1: shown as it is used
        self.url_edit.editingFinished.connect(lambda: self.url_edit.setText(engine_url(self.url_edit.text())))
        form.addRow("URL", self.url_edit)
        self.token_edit = QLineEdit(settings["token"])
        self.token_edit.setEchoMode(QLineEdit.EchoMode.Password)
        form.addRow("Token", self.token_edit)
        self.model_combo = QComboBox()
        self.model_combo.setEditable(True)
        self.model_combo.setEditText(settings["model"])
        self.model_combo.setMinimumContentsLength(12)
        form.addRow("Model", self.model_combo)
        layout.addLayout(form)
        self.models_list = QListWidget()
        self.models_list.setMaximumHeight(100)
        layout.addWidget(self.models_list)
        download_row = QHBoxLayout()
        self.download_button = QPushButton("Download model")
        self.download_button.setToolTip("The engine downloads the model selected above into its model cache "
                                        "(on the computer it runs on)")
        self.download_cancel_button = QPushButton("Cancel")
        self.download_cancel_button.setEnabled(False)
        download_row.addWidget(self.download_button)
        download_row.addWidget(self.download_cancel_button)
        layout.addLayout(download_row)
        self.download_progress = QProgressBar()
        self.download_progress.setTextVisible(True)
        layout.addWidget(self.download_progress)
        local = QFormLayout()
        self.command_edit = QLineEdit(settings["command"])
        self.command_edit.setPlaceholderText("found or installed by Set up…")
        self.command_edit.setToolTip("How the local engine is started, e.g. '/path/to/farslip serve --port 8765'")
        local.addRow("Local engine", self.command_edit)
        layout.addLayout(local)
        row = QHBoxLayout()
        self.setup_button = QPushButton("Set up…")
        self.setup_button.setToolTip("Find an installed engine, or install one in its own environment")
        self.engine_button = QPushButton("Start engine")
        self.log_button = QPushButton("Show log")
        self.log_button.setCheckable(True)
        for button in (self.setup_button, self.engine_button, self.log_button):
            row.addWidget(button)
        layout.addLayout(row)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(2000)
        self.log_view.setVisible(False)
        layout.addWidget(self.log_view, 1)
        layout.addStretch(0)
        self.local = LocalEngine(self)
        self.local.stateChanged.connect(self._local_state)
        self.local.logged.connect(self.log_view.appendPlainText)
        self.check_button.clicked.connect(self.check)
        self.engine_button.clicked.connect(self.toggle_local_engine)
        self.setup_button.clicked.connect(self.open_setup)
        self.log_button.toggled.connect(self.log_view.setVisible)
        self.download_button.clicked.connect(lambda: self.download_model())
        self.download_cancel_button.clicked.connect(self.cancel_download)
        self.download_task = None
        self.download_when_ready: str | None = None  # a model to download once the local engine answers
        self.on_online.append(self._download_when_online)
        self.local.stateChanged.connect(self._download_not_started)
        self.setup_dialog = None
        self.token_unsaved_said = False

    # --- settings and client -------------------------------------------------------------------
    def client(self, timeout: float = 30.0) -> EngineClient:
        stored = save_engine_settings(engine_url(self.url_edit.text()), self.token_edit.text().strip(),
                                      self.model_combo.currentText().strip())
        if not stored and not self.token_unsaved_said:
            self.token_unsaved_said = True
            self.notify("warning", "the engine token is kept only until QGIS closes: QGIS stores it encrypted once "
                                   "a master password is set (Settings → Options → Authentication)")
        return EngineClient(engine_url(self.url_edit.text()), self.token_edit.text().strip() or None, timeout=timeout)

    def set_status(self, ok: bool | None, text: str) -> None:
        self.online = bool(ok)
        self.status_light.setStyleSheet(f"color: {COLOURS[ok]}")
        self.status_text.setText(text)

    # --- checking (async) ----------------------------------------------------------------------
    def check(self) -> None:
        """Ask the engine for its health and models off the UI thread; the status follows the answer."""
        client = self.client(timeout=UI_TIMEOUT_S)
        self.checking = True
        self._asked += 1
        asked = self._asked
        if not self.online:
            self.status_text.setText("checking…")
        run_async(lambda: (client.health(), client.models()),
                  lambda answer: asked == self._asked and self._checked(answer),  # only the latest check counts
                  lambda exc: asked == self._asked and self._check_failed(exc), owner=self)

    def _checked(self, answer) -> None:
        health, models = answer
        self.checking = False
        self.unreachable = False
        self.set_status(True, f"{health['version']} on {health['device']}, {health['queue_length']} queued")
        self.models = models
        current = self.model_combo.currentText()
        self.model_combo.clear()
        self.model_combo.addItems([models["default"]] + [r["name"] for r in models["releases"]
                                                         if r["name"] != models["default"]])
        if current:
            self.model_combo.setEditText(current)
        selected = self.models_list.currentItem()
        chosen = selected.data(Qt.ItemDataRole.UserRole) if selected else None
        self.models_list.clear()
        for release in models["releases"]:
            state = "downloaded" if release["cached"] else "not downloaded"
            item = QListWidgetItem(f"{release['name']} — {state}")
            item.setData(Qt.ItemDataRole.UserRole, release["name"])
            item.setToolTip(release.get("description", ""))
            self.models_list.addItem(item)
            if release["name"] == chosen:  # the refreshed list keeps the user's choice
                self.models_list.setCurrentItem(item)
        for callback in self.on_online:
            callback()

    def can_start_for(self) -> bool:
        """Whether pressing Segment may start the local engine first: it is configured for this URL's port,
        not running, and the last check found nothing answering there."""
        command = self.command_edit.text().strip()
        url = urlparse(engine_url(self.url_edit.text()))
        if not command or self.local.running() or not self.unreachable or url.hostname not in LOCAL_HOSTS:
            return False
        try:
            argv = command_words(command)
        except EngineError:  # said when it is started
            return False
        port = argv[argv.index("--port") + 1] if "--port" in argv[:-1] else "8765"
        return port == str(url.port or 8765)

    def _check_failed(self, exc: EngineError) -> None:
        self.checking = False
        self.unreachable = "not answering" in str(exc)
        if self.local.state == "starting":
            return
        text = str(exc)
        if "not answering" in text:
            text = "not answering: press Start engine (Set up… the first time) or correct the URL"
        self.set_status(False, text)

    # --- local engine --------------------------------------------------------------------------
    @property
    def engine_process(self):
        return self.local.process if self.local.running() else None

    def toggle_local_engine(self) -> None:
        if self.local.running():
            self.local.stop()
            return
        command = self.command_edit.text().strip()
        if not command or command == "farslip serve":
            from qgis_farslip.engine_setup import find_engine

            self.set_status(None, "looking for an installed engine…")
            run_async(lambda: find_engine(), self._start_found, owner=self)
            return
        self.start(command)

    def _start_found(self, engine) -> None:
        if engine is None:
            self.set_status(False, "no engine installed yet: press Set up… to install it")
            self.open_setup()
            return
        self.use_engine(engine, start=True)

    def use_engine(self, engine, start: bool = False) -> None:
        """Take an engine found or installed by the set-up; start it when asked."""
        self.command_edit.setText(serve_command(engine.command, engine_url(self.url_edit.text())))
        save_engine_command(self.command_edit.text())
        if start:
            self.start(self.command_edit.text())

    def start(self, command: str) -> None:
        save_engine_command(command)
        self.log_button.setChecked(True)
        try:
            argv = command_words(command)
        except EngineError as exc:
            self.set_status(False, str(exc))
            self.notify("critical", str(exc))
            return
        self.local.start(argv, engine_url(self.url_edit.text()))

    def _local_state(self, state: str, text: str) -> None:
        self.engine_button.setText("Stop engine" if state in ("starting", "ready") else "Start engine")
        self.engine_button.setEnabled(state != "stopping")  # (its port is free once it has exited)
        if state == "starting":
            self.set_status(None, text)
        elif state == "ready":
            if not self.token_edit.text().strip():
                from qgis_farslip.client import read_local_token

                self.token_edit.setText(read_local_token())
            self.set_status(True, text)
            self.check()
        else:
            self.set_status(False, text)
            if state in ("died", "failed"):
                self.notify("critical", text)

    def open_setup(self):
        from qgis_farslip.setup_dialog import EngineSetupDialog

        if self.setup_dialog is not None and not sip.isdeleted(self.setup_dialog) and (
                self.setup_dialog.isVisible() or self.setup_dialog.installing()):
            self.setup_dialog.show()  # one set-up at a time: the one open (or still installing) comes forward
            self.setup_dialog.raise_()
            self.setup_dialog.activateWindow()
            return self.setup_dialog
        try:
            configured = engine_prefix(self.command_edit.text())[0] if self.command_edit.text().strip() else None
        except EngineError:
            configured = None
        self.setup_dialog = EngineSetupDialog(configured, self)
        self.setup_dialog.engineReady.connect(lambda engine: self.use_engine(engine))
        self.setup_dialog.show()
        return self.setup_dialog

    # --- models --------------------------------------------------------------------------------
    def selected_model(self) -> str:
        item = self.models_list.currentItem()
        return item.data(Qt.ItemDataRole.UserRole) if item is not None else self.model_combo.currentText().strip()

    def download_model(self, name: str | None = None):
        """Have the engine download the chosen release (local or remote engine alike); a local engine that
        is not running yet is started first."""
        from qgis_farslip.models_task import ModelDownloadTask

        name = name or self.selected_model()
        releases = [r["name"] for r in (self.models or {}).get("releases", [])]
        if not name or (releases and name not in releases):
            self.notify("warning", "choose a model in the list above first (a model file of your own needs no "
                                   "download)")
            return None
        if not self.online and self.can_start_for():
            self.download_when_ready = name
            self._downloading(name, "starting the engine…")
            self.toggle_local_engine()
            return None
        where = "this computer" if is_local_engine(engine_url(self.url_edit.text())) else "the engine's computer"
        self.download_task = task = ModelDownloadTask(self.client(), name, where, on_done=self._download_ended)
        show_progress(task, self.download_progress, prefix=f"{name}: ")
        self._downloading(name, "asking the engine…")
        QgsApplication.taskManager().addTask(task)
        return task

    def _downloading(self, name: str, text: str) -> None:
        self.download_button.setEnabled(False)
        self.download_cancel_button.setEnabled(True)
        self.download_progress.setValue(0)
        self.download_progress.setFormat(f"{name}: {text}")

    def _download_when_online(self) -> None:
        name, self.download_when_ready = self.download_when_ready, None
        if name:
            self.download_model(name)

    def _download_not_started(self, state: str, _text: str) -> None:
        if self.download_when_ready and state in ("died", "failed", "stopped"):
            self.download_when_ready = None
            self._download_idle("the engine did not start")

    def cancel_download(self) -> None:
        if self.download_when_ready:
            self.download_when_ready = None
            self.local.stop()
            self._download_idle("cancelled")
        elif self.download_task is not None:
            self.download_progress.setFormat("%p% — cancelling…")
            self.download_task.cancel()

    def _download_idle(self, text: str) -> None:
        self.download_button.setEnabled(True)
        self.download_cancel_button.setEnabled(False)
        self.download_progress.setFormat(text)

    def _download_ended(self, task) -> None:
        self.download_task = None
        if task.error == "cancelled":
            self.download_progress.setValue(0)
            self._download_idle(f"{task.name}: cancelled")
            self.notify("info", f"download of {task.name} cancelled")
        elif task.error:
            self.download_progress.setValue(0)
            self._download_idle(f"{task.name}: failed")
            self.notify("critical", task.error)
        else:
            self.download_progress.setValue(100)
            self._download_idle(f"{task.name}: downloaded")
            self.notify("info", f"model {task.name} downloaded")
        self.check()  # the list says which models are downloaded now
