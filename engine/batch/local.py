"""Computing work units in this process, one after another (a batch run without Ray)."""

from __future__ import annotations

from typing import Iterable, Iterator

from engine.batch.units import Result, Unit, read_unit
from engine.batch.work import compute_unit
from engine.errors import FarSLIPError


class LocalExecutor:
    """Runs units with the driver's own Segmenter."""

    description = "in-process"

    def __init__(self, segmenter):
        self.segmenter = segmenter
        self.workers = 1

    def map(self, units: Iterable[Unit]) -> Iterator[Result]:
        for unit in units:
            try:
                yield unit, compute_unit(self.segmenter, unit, read_unit(unit)), None
            except FarSLIPError as exc:
                yield unit, None, str(exc)

    def close(self) -> None:
        pass
