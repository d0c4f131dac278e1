"""Geo-referenced rasters: reading any GDAL raster window by window at a working resolution,
segmenting it block by block with the global crop grid, and writing geo-referenced outputs."""
