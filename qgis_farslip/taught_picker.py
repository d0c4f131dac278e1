"""The Segment tab's "Taught" row: a list of the taught-classes files this computer knows (remembered ones
and those in the project's folder, see `taught_files.py`) and a browse button; choosing one makes its
classes the classes of the next Segment run, "none" goes back to the class names only. A file that cannot
be used is said in one line and nothing changes."""

from __future__ import annotations

from pathlib import Path

from qgis.core import QgsProject
from qgis.PyQt.QtCore import Qt
from qgis.PyQt.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QToolButton, QWidget

from qgis_farslip import taught_files
from qgis_farslip.client import EngineError

NONE = "none: the class names only"


class TaughtPicker(QWidget):
    def __init__(self, dock, parent=None):
        super().__init__(parent)
        self.dock = dock
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.combo = QComboBox()
        self.combo.setMinimumContentsLength(12)
        self.combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.combo.setToolTip("Classes taught from labelled polygons (Labels tab), saved as .classes.json: the "
                              "next Segment run uses the chosen file's classes")
        self.browse_button = QToolButton()
        self.browse_button.setText("…")
        self.browse_button.setToolTip("Choose a .classes.json file")
        layout.addWidget(self.combo, 1)
        layout.addWidget(self.browse_button)
        self.combo.activated.connect(self._chosen)
        self.browse_button.clicked.connect(lambda: self.browse())
        self.combo.addItem(NONE, None)  # the dock lists the files (`refresh`) once it is built

    def folders(self) -> list[str]:
        return [QgsProject.instance().homePath(), str(self.dock.results_folder())]

    def refresh(self) -> None:
        """List the known files again, the one in use (if any) chosen."""
        self.combo.blockSignals(True)
        self.combo.clear()
        self.combo.addItem(NONE, None)
        for taught in taught_files.known_files(self.folders()):
            self.combo.addItem(taught_files.label(taught), str(taught.path))
            self.combo.setItemData(self.combo.count() - 1, f"{taught.path}\nmade with model "
                                   f"{taught_files.model_label(taught.model)}", Qt.ItemDataRole.ToolTipRole)
        self._select(self.dock.taught.path if self.dock.taught is not None else None)
        self.combo.blockSignals(False)

    def _select(self, path: Path | None) -> None:
        index = self.combo.findData(str(Path(path).resolve())) if path is not None else 0
        self.combo.setCurrentIndex(max(index, 0))

    def show_current(self, path: Path | None) -> None:
        """The dock's taught classes changed: their file (remembered from now on) or "none" is chosen."""
        if path is not None:
            taught_files.remember(path)
            if self.combo.findData(str(Path(path).resolve())) < 0:
                self.refresh()
                return
        self._select(path)

    def _chosen(self, index: int) -> None:
        path = self.combo.itemData(index)
        if path is None:
            self.dock.clear_taught()
        else:
            self.use(path)

    def use(self, path: str | Path) -> bool:
        """Make a file's classes those of the next run; False (and the reason in the message bar) when it
        cannot be used."""
        try:
            taught = taught_files.read_taught(path)
        except EngineError as exc:
            self.dock._fail(str(exc))
            self._select(self.dock.taught.path if self.dock.taught is not None else None)
            return False
        self.dock.set_taught(taught)
        return True

    def browse(self, path: str | None = None) -> bool:
        path = path or QFileDialog.getOpenFileName(self, "Taught classes", QgsProject.instance().homePath(),
                                                   "Taught classes (*.classes.json)")[0]
        return bool(path) and self.use(path)
