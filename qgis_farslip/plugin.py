"""The plugin object QGIS loads: wires the FarSLIP user interface into the QGIS window."""

from __future__ import annotations


class FarSLIPPlugin:
    """Entry point created by `classFactory`; the dock and tools hang off it."""

    def __init__(self, iface):
        self.iface = iface

    def initGui(self):  # noqa: N802 (QGIS's name)
        pass

    def unload(self):
        pass
