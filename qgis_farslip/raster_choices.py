"""What the engine cannot guess about an input raster, chosen in the dock: which bands are red, green
and blue (a grey or multispectral raster without colour interpretation; the engine otherwise takes the
bands marked or described red/green/blue, else 1-3) and which value is no data (a black frame the file does not
declare). Both go into the job as `bands` and `nodata`; empty means the engine's choice."""

from __future__ import annotations

from qgis.gui import QgsRasterBandComboBox
from qgis.PyQt.QtGui import QDoubleValidator
from qgis.PyQt.QtWidgets import QComboBox, QHBoxLayout, QLineEdit, QWidget

AUTO = "auto"


class BandChooser(QWidget):
    """Three band lists (red, green, blue) of the chosen layer, each "auto" until set."""

    def __init__(self, parent=None):
        super().__init__(parent)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        self.combos = []
        for colour in ("red", "green", "blue"):
            combo = QgsRasterBandComboBox()
            combo.setShowNotSetOption(True, AUTO)
            # band names are long ("Band 1: Red (Gray)"): the three share a 400 px dock, names elided
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(1)
            combo.setToolTip(f"The band the model sees as {colour} ({AUTO}: the bands marked or described as red, "
                             f"green and blue, else 1, 2, 3; a grey raster: the same band three times)")
            row.addWidget(combo)
            self.combos.append(combo)

    def set_layer(self, layer) -> None:
        for combo in self.combos:
            combo.setLayer(layer)
            combo.setBand(-1)

    def bands(self) -> list[int] | None:
        """[r, g, b] once every one is set, None while any is "auto"."""
        chosen = [combo.currentBand() for combo in self.combos]
        return None if any(band < 1 for band in chosen) else chosen


class NoDataEdit(QLineEdit):
    """A number, or empty: the value the raster declares (if any)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.setValidator(QDoubleValidator(self))
        self.setPlaceholderText("as the raster declares")
        self.setToolTip("Pixels of this value get no class (e.g. 0 for a black frame the file does not declare)")

    def value(self) -> float | None:
        text = self.text().strip().replace(",", ".")
        try:
            return float(text) if text else None
        except ValueError:
            return None
