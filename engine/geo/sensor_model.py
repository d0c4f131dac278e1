"""Rasters placed by a sensor model instead of a geotransform: ground control points (a scanned map, a
scene before orthorectification) or RPCs (the rational polynomial coefficients of a satellite's level-1
product: Pléiades, WorldView, SPOT primary). GDAL gives such a raster no geotransform (rasterio: the
identity, without a warning). The engine works in its pixel space, as for a raster without
geo-reference, and its outputs carry the same GCPs or RPCs, moved with the area read, so that GDAL and
QGIS place them exactly where they place the input."""

from __future__ import annotations

from dataclasses import dataclass, replace

from affine import Affine


@dataclass(frozen=True)
class SensorModel:
    gcps: tuple | None = None  # (ground control points, their CRS)
    rpcs: object | None = None  # rasterio.rpc.RPC

    @staticmethod
    def of(dataset, transform: Affine) -> "SensorModel | None":
        """The dataset's GCPs and RPCs when it has no geotransform, else None."""
        if transform != Affine.identity():
            return None
        points, crs = dataset.gcps
        model = SensorModel(gcps=(list(points), crs) if points else None, rpcs=dataset.rpcs)
        return model if model.gcps or model.rpcs else None

    @property
    def what(self) -> str:
        """How the raster is placed, in words."""
        kinds = ([f"{len(self.gcps[0])} ground control points"] if self.gcps else []) + (["RPCs"] if self.rpcs else [])
        return " and ".join(kinds)

    def moved(self, col: float, row: float) -> "SensorModel":
        """The same model for the area whose top-left pixel is (col, row) of the raster."""
        from rasterio.control import GroundControlPoint

        gcps = rpcs = None
        if self.gcps:
            points, crs = self.gcps
            gcps = ([GroundControlPoint(p.row - row, p.col - col, p.x, p.y, p.z, p.id, p.info) for p in points], crs)
        if self.rpcs:
            rpcs = type(self.rpcs)(**{**self.rpcs.to_dict(), "line_off": self.rpcs.line_off - row,
                                      "samp_off": self.rpcs.samp_off - col})
        return replace(self, gcps=gcps, rpcs=rpcs)

    def write_to(self, dataset) -> None:
        """Give an open output dataset (on the same grid) this model."""
        if self.gcps:
            dataset.gcps = self.gcps
        if self.rpcs:
            dataset.rpcs = self.rpcs
