"""FarSLIP for QGIS: the plugin package.

Runs inside QGIS's own Python. It talks to the FarSLIP engine over HTTP and never imports torch,
open_clip, rasterio or the `engine` package.
"""


def classFactory(iface):  # noqa: N802 (QGIS's name)
    from qgis_farslip.plugin import FarSLIPPlugin

    return FarSLIPPlugin(iface)
