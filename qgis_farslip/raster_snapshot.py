"""What a task needs of a raster layer, taken on the main thread before the task starts.

A QgsRasterLayer belongs to the main thread and may be removed from the project while a task runs (the
layer object is then deleted under the task). So a task never touches the layer: it works from a
`RasterSnapshot` — the layer's name, CRS, extent, file, pixel size and a clone of its data provider
(which QGIS renders from in any thread, as its own "Save as" task does) — made when the run is asked for.
Removing or changing the layer afterwards does not affect the run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from qgis.core import (QgsCoordinateReferenceSystem, QgsRasterDataProvider, QgsRasterInterface, QgsRasterLayer,
                       QgsRectangle)


def crs_text(crs: QgsCoordinateReferenceSystem) -> str | None:
    """How the engine is told a CRS: its authority code ("EPSG:32633"), else its WKT (a custom CRS, which
    QGIS names "USER:100000" — a name only this QGIS knows); None for no CRS (then the engine takes
    coordinates in the raster's own CRS or pixel space, as QGIS draws a raster without one)."""
    if not crs.isValid():
        return None
    authid = crs.authid()
    if authid and not authid.upper().startswith("USER:"):
        return authid
    return crs.toWkt() or None


def user_nodata(provider: QgsRasterDataProvider) -> float | None:
    """The single value QGIS is told is no data in every band that has one (an "Additional no data value");
    None when there is none, or ranges or several values (the engine takes one value)."""
    values = set()
    for band in range(1, provider.bandCount() + 1):
        ranges = provider.userNoDataValues(band)
        if not ranges:
            continue
        if len(ranges) != 1 or ranges[0].min() != ranges[0].max():
            return None
        values.add(float(ranges[0].min()))
    return values.pop() if len(values) == 1 else None


@dataclass(frozen=True)
class RasterSnapshot:
    name: str
    crs: QgsCoordinateReferenceSystem  # the layer's CRS in QGIS (the user may have set it: Layer CRS)
    extent: QgsRectangle  # in `crs`
    file: str | None  # the file behind a GDAL layer; None for web/database layers and subdatasets
    file_crs: QgsCoordinateReferenceSystem  # the CRS the file itself declares, as QGIS read it
    units_per_pixel: float | None  # the raster's own pixel size in CRS units; None for web layers
    provider: QgsRasterDataProvider  # a clone of the layer's provider, owned by the snapshot
    # a value the user told QGIS is no data (Layer Properties → Transparency → Additional no data value)
    user_nodata: float | None = None

    @classmethod
    def of(cls, layer: QgsRasterLayer) -> "RasterSnapshot":
        """The snapshot of a layer (main thread)."""
        provider = layer.dataProvider()
        file = None
        if layer.providerType() == "gdal":
            path = layer.source().split("|")[0]
            file = path if os.path.isfile(path) else None
        has_pixels = bool(provider.capabilities() & QgsRasterInterface.Capability.Size)
        size = layer.rasterUnitsPerPixelX() if has_pixels else 0.0
        return cls(name=layer.name(), crs=QgsCoordinateReferenceSystem(layer.crs()),
                   extent=QgsRectangle(layer.extent()), file=file,
                   file_crs=QgsCoordinateReferenceSystem(provider.crs()),
                   units_per_pixel=size if size > 0 else None, provider=provider.clone(),
                   user_nodata=user_nodata(provider))

    def nodata(self, chosen: float | None) -> float | None:
        """The no-data value a run sends: the one chosen in the panel, else the layer's own in QGIS."""
        return chosen if chosen is not None else self.user_nodata

    def provider_copy(self) -> QgsRasterDataProvider:
        """A provider of its own for one rendering (a QgsRasterPipe takes ownership of what it is given)."""
        return self.provider.clone()

    @property
    def crs_text(self) -> str | None:
        return crs_text(self.crs)
