"""Pixel rectangles: the one geometry type that dense inference, the raster pipeline and batch runs share.

Kept free of torch so that processes that only read pixels (Ray's reader actors) import it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Box:
    """A pixel rectangle: rows y..y+h, columns x..x+w."""

    y: int
    x: int
    h: int
    w: int

    def shifted(self, dy: int, dx: int) -> "Box":
        return Box(self.y + dy, self.x + dx, self.h, self.w)

    def intersects(self, other: "Box") -> bool:
        return (self.y < other.y + other.h and other.y < self.y + self.h
                and self.x < other.x + other.w and other.x < self.x + self.w)
