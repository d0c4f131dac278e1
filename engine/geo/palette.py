"""A palette raster (one band of colour-table indices) read as red, green and blue: a VRT that looks
each index up in the table, so that a resampled read resamples colours, not indices."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.enums import ColorInterp

from engine.geo.raster_names import is_gdal_name


PALETTE_NODATA = 256  # the value of a no-data colour-table entry in the expanded bands (UInt16)


@dataclass(frozen=True)
class PaletteRGB:
    """A palette raster's colours as a VRT (XML text GDAL opens): `has_invalid` when some entries
    (transparent ones, the declared nodata index) are no data; `masked` when the raster's own mask
    (an alpha band, an internal or .msk mask) leaves pixels out as well."""

    xml: str
    has_invalid: bool
    masked: bool = False


def palette_rgb_vrt(ds, path: str) -> PaletteRGB | None:
    """The R, G, B of a raster of one band with a colour table (and at most an alpha band beside
    it: `gdalwarp -dstalpha` of a palette raster gives one), as `gdal_translate -expand rgb` gives
    them, in a VRT of three UInt16 bands; None for any other raster. Each band maps the palette
    index through a lookup table (index → colour component; `PALETTE_NODATA` for an entry with alpha 0
    or the declared nodata index, which GDAL's masks then make no data). Not GDAL's
    <ColorTableComponent>: a resampled read of those bands resamples the palette *indices* (and
    looks up meaningless colours), whereas a band with a nodata value of its own that the source
    lacks is read at its nominal resolution and then resampled (GDAL's VRT rule), so that reading
    at a working GSD resamples the real colours, exactly as from the same image stored as RGB.
    Where the raster has a mask of its own (an alpha band, an internal or .msk mask), a second
    source on each band writes `PALETTE_NODATA` wherever that mask is not fully opaque (255, or 65535
    for a 16-bit alpha band): the masked pixels are no data too (a partly transparent alpha counts as
    no data here)."""
    from xml.sax.saxutils import escape, quoteattr

    from rasterio.enums import MaskFlags

    index_band_only = ds.count == 1 or (ds.count == 2 and ds.colorinterp[1] == ColorInterp.alpha)
    if not index_band_only or ds.colorinterp[0] != ColorInterp.palette or ds.dtypes[0] not in ("uint8", "uint16"):
        return None
    try:
        table = ds.colormap(1)
    except ValueError:  # "palette" without a colour table
        return None
    nodata = ds.nodata
    nodata_index = int(nodata) if nodata is not None and float(nodata).is_integer() and nodata >= 0 else None
    size = max(max(table) + 1, (nodata_index or 0) + 1)
    entries = [table.get(i, (0, 0, 0, 255)) for i in range(size)]
    invalid = [entry[3] == 0 or i == nodata_index for i, entry in enumerate(entries)]
    # an alpha band beside the indices (read itself: GDAL's mask of band 1 is its nodata value where
    # there is one), else the index band's own mask where it is more than that value (which the table handles)
    mask_band = ("2" if ds.count == 2 else "mask,1" if not {MaskFlags.all_valid, MaskFlags.nodata}
                 & set(ds.mask_flag_enums[0]) else None)
    masked = mask_band is not None
    opaque = np.iinfo(ds.dtypes[1]).max if mask_band == "2" and np.dtype(ds.dtypes[1]).kind == "u" else 255
    source = escape(path if is_gdal_name(path) else str(Path(path).resolve()))
    properties = (f'<SourceProperties RasterXSize="{ds.width}" RasterYSize="{ds.height}" '
                  f'DataType={quoteattr("UInt16" if ds.dtypes[0] == "uint16" else "Byte")} '
                  f'BlockXSize="{ds.block_shapes[0][1]}" BlockYSize="{ds.block_shapes[0][0]}"/>')
    # where the mask is opaque the source is skipped; elsewhere its lookup table writes no data
    mask_source = (f'<ComplexSource><SourceFilename relativeToVRT="0">{source}</SourceFilename>'
                   f'<SourceBand>{mask_band}</SourceBand><NODATA>{opaque}</NODATA>'
                   f'<LUT>0:{PALETTE_NODATA},{opaque}:{PALETTE_NODATA}</LUT></ComplexSource>') if masked else ""
    bands = []
    for band, name in enumerate(("Red", "Green", "Blue")):
        # indices past the table are black (as GDAL expands them): the table's last point is clamped
        points = [f"{i}:{PALETTE_NODATA if bad else entry[band]}"
                  for i, (entry, bad) in enumerate(zip(entries, invalid))]
        points.append(f"{size}:0")
        bands.append(f'<VRTRasterBand dataType="UInt16" band="{band + 1}"><ColorInterp>{name}</ColorInterp>'
                     f'<NoDataValue>{PALETTE_NODATA}</NoDataValue><ComplexSource>'
                     f'<SourceFilename relativeToVRT="0">{source}</SourceFilename><SourceBand>1</SourceBand>'
                     f'{properties}<LUT>{",".join(points)}</LUT></ComplexSource>{mask_source}</VRTRasterBand>')
    xml = f'<VRTDataset rasterXSize="{ds.width}" rasterYSize="{ds.height}">{"".join(bands)}</VRTDataset>'
    return PaletteRGB(xml, any(invalid), masked)
