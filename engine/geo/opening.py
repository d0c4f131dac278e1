"""Opening a raster for reading: by any GDAL driver, or (the service) only by the drivers a job was
allowed; and the message for a container of several rasters."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import rasterio
from rasterio.errors import RasterioIOError

from engine.errors import InputError
from engine.geo.raster_names import unreadable_file


def subdatasets_message(name: str, subdatasets: list[str], shown: int = 6) -> str:
    """One line for a container of several rasters (GDAL subdatasets) given as an input."""
    more = len(subdatasets) - shown
    listed = ", ".join(subdatasets[:shown]) + (f" (and {more} more)" if more > 0 else "")
    return (f"{name} holds {len(subdatasets)} rasters (GDAL subdatasets), not one: give one of them as the input "
            f"(in quotes in a shell): {listed}")


_allowed_drivers: ContextVar[tuple[str, ...] | None] = ContextVar("allowed_drivers", default=None)


@contextmanager
def only_drivers(drivers: tuple[str, ...]):
    """Within this context (and thread), `open_raster` opens rasters only with these GDAL drivers:
    the service runs a client's job so, with the formats its submit check allowed."""
    token = _allowed_drivers.set(tuple(drivers))
    try:
        yield
    finally:
        _allowed_drivers.reset(token)


def open_raster(path: str | Path):
    """`rasterio.open(path)` for reading, by any GDAL driver — or, inside `only_drivers`, by those
    alone (an InputError when none of them opens it, or when the path is a pipe or an unreadable file)."""
    problem = unreadable_file(path)
    if problem is not None:
        raise InputError(problem)
    drivers = _allowed_drivers.get()
    if drivers is None:
        return rasterio.open(path)
    for driver in drivers:
        try:
            return rasterio.open(path, driver=driver)
        except RasterioIOError:
            continue
    raise InputError(f"{Path(str(path)).name} is not a raster of a format this engine serves (changed since the "
                     f"job was submitted?)")
