"""FarSLIP inference engine: models, dense text-prompted segmentation, GeoTIFF pipeline, CLI, API.

Torch lives here (and in `training/`); the QGIS plugin talks to this package over HTTP only.
"""

__version__ = "0.1.0"
