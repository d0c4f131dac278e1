"""Simplifying the polygons of a class raster as one coverage: each stretch of boundary between two
neighbours is simplified once, and both take the same line — no gaps, no overlaps.

Traced from a class raster, the polygons tile the map: every boundary between two regions is walked by
both, in opposite directions. Simplified each on its own (Douglas-Peucker), the two copies of a boundary
move apart: on a fragmented map ~3 % of it ended in gaps and 3 % in overlaps. Here the boundaries are cut
at their *nodes* — the pixel corners where three or more regions meet (no data and the outside of the
raster count as regions, so the raster's corners are nodes too) or two touch diagonally — into
*sections*: between two nodes a boundary has the same region on each side. A section is simplified once
(Douglas-Peucker, its ends fixed), walked in one direction fixed by its pixel corners, and each polygon
it bounds takes that line. No data is a region that is never simplified (`fixed`): the boundary with it
stays as traced, so the polygons cover exactly the valid pixels and no line crosses no data.

Which sections are simplified (`Coverage.decide`): a ring (outline or hole) is *sound* when, with its
sections simplified, it is a simple ring that keeps its traced area within `MAX_AREA_CHANGE`, in a valid
polygon that keeps its own area too (thin and small regions are not: a 1 px wide strip would become a
triangle of half its area, a pixel nothing, a hole of a pixel be filled, a thin ring-shaped region grow
as its outline grows and its hole shrinks). A section is simplified when the rings on both of its sides
are sound. That is judged twice — with every section simplified, then with the sections the first
judgement simplified, since a ring whose neighbour keeps a shared section traced can turn invalid or
lose area (after one judgement 6 of 40,498 polygons of a fragmented map were invalid, after two none).
A polygon still invalid keeps its sections' traced lines. The nodes, sections and judgements are
functions of the class raster alone, so the polygons are the same whatever the blocks it came in
(`engine.geo.polygons` feeds this block by block, a region with the neighbours that it depends on).

Everything is in pixel coordinates (column, row), where a traced boundary runs along whole pixel sides:
corners are exact integers, and a corner's key is `row * (width + 1) + column`.
"""

from __future__ import annotations

import numpy as np
import shapely

# A simplified ring (outline or hole) whose area differs from the traced one's by more than this fraction
# makes its polygon unsound. Douglas-Peucker within 1 px collapses a pixel or a 1 px wide strip (to a
# triangle of half its area, or to nothing), takes a third of an L of 3 pixels, 8 % of a staircase
# triangle of 78 pixels, fills a hole of one pixel; it changes the area of a disc of 2,000 pixels by ~1 %.
MAX_AREA_CHANGE = 0.05

# The values of the pixels beyond the raster's edges, when finding nodes: another beyond the left and
# right edges than beyond the top and bottom ones, so that the raster's corners are nodes (a boundary
# that runs round one is not simplified across it)
OUTSIDE, OUTSIDE_SIDES = -1, -2


def node_corners(values: np.ndarray) -> np.ndarray:
    """Which corners of a block of pixel values are nodes: (h + 1, w + 1) booleans for an (h, w) block
    given with a one-pixel frame around it ((h + 2, w + 2) values: the neighbouring pixels, or `OUTSIDE`).
    A node is a corner whose four pixels hold three or more values, or two on the diagonals."""
    a, b = values[:-1, :-1], values[:-1, 1:]  # above-left, above-right of each corner
    c, d = values[1:, :-1], values[1:, 1:]  # below-left, below-right
    distinct = 1 + (b != a) + ((c != a) & (c != b)) + ((d != a) & (d != b) & (d != c))
    return (distinct >= 3) | ((a == d) & (b == c) & (a != b))


def framed(block: np.ndarray) -> np.ndarray:
    """A block of class values in a one-pixel frame of `OUTSIDE` (`OUTSIDE_SIDES` left and right), for
    `node_corners`."""
    out = np.full((block.shape[0] + 2, block.shape[1] + 2), OUTSIDE, dtype=np.int16)
    out[1:-1, [0, -1]] = OUTSIDE_SIDES
    out[1:-1, 1:-1] = block
    return out


class Nodes:
    """Node corners by key — `row * (width + 1) + column`, and `column * (height + 1) + row` to walk a
    column — so that those on a straight run of a boundary are found without walking it corner by corner."""

    def __init__(self, keys: np.ndarray, width: int, height: int):
        self.width, self.height = width, height
        self.keys = np.unique(keys)
        rows, columns = np.divmod(self.keys, width + 1)
        self.by_column = np.sort(columns * (height + 1) + rows)

    def key(self, xy: np.ndarray) -> np.ndarray:
        return xy[:, 1] * (self.width + 1) + xy[:, 0]

    def holds(self, xy: np.ndarray) -> np.ndarray:
        """Whether each corner ((N, 2) columns and rows) is a node."""
        keys = self.key(xy)
        at = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        return (self.keys[at] == keys) if len(self.keys) else np.zeros(len(keys), dtype=bool)

    def between(self, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The nodes strictly inside each straight run from `start` to `end` ((N, 2) corners, along a row or
        a column): how many on each, and all of them ((M, 2) columns and rows), run after run, each run's
        in the order it walks them."""
        along_row = start[:, 1] == end[:, 1]
        low, high = np.minimum(start, end), np.maximum(start, end)
        by_row = (self.keys, lambda xy: xy[:, 1] * (self.width + 1) + xy[:, 0])
        by_column = (self.by_column, lambda xy: xy[:, 0] * (self.height + 1) + xy[:, 1])
        first, last = np.zeros(len(start), dtype=np.int64), np.zeros(len(start), dtype=np.int64)
        for runs, (keys, key) in ((along_row, by_row), (~along_row, by_column)):
            first[runs] = np.searchsorted(keys, key(low[runs]), "right")
            last[runs] = np.searchsorted(keys, key(high[runs]), "left")
        counts = np.maximum(last - first, 0)
        run = np.repeat(np.arange(len(start)), counts)
        step = np.arange(len(run)) - np.repeat(np.cumsum(counts) - counts, counts)
        forward = (end - start).sum(axis=1) > 0  # towards greater columns or rows
        index = np.where(forward[run], first[run] + step, last[run] - 1 - step)
        found = np.zeros((len(run), 2), dtype=np.int64)
        in_row = along_row[run]
        rows, columns = np.divmod(self.keys[index[in_row]], self.width + 1)
        found[in_row] = np.stack([columns, rows], axis=1)
        columns, rows = np.divmod(self.by_column[index[~in_row]], self.height + 1)
        found[~in_row] = np.stack([columns, rows], axis=1)
        return counts, found


def _ring_corners(polygons: np.ndarray, nodes: Nodes) -> tuple[np.ndarray, ...]:
    """The corners along each polygon's rings that matter, in ring order, without the closing one: its
    vertices and the nodes on its straight runs. (corners (N, 2) int64 as (column, row), the ring of
    each, the polygon of each ring, whether each corner is a vertex, whether it is a node, and whether
    each ring's vertices were all distinct from the next.)"""
    rings, owner = shapely.get_rings(polygons, return_index=True)  # outline, then holes
    xy, ring = shapely.get_coordinates(rings, return_index=True)
    xy = np.rint(xy).astype(np.int64)
    counts = np.bincount(ring, minlength=len(rings))
    keep = np.ones(len(xy), dtype=bool)
    keep[np.cumsum(counts) - 1] = False  # the closing vertex
    xy, ring = xy[keep], ring[keep]
    n = np.bincount(ring, minlength=len(rings))
    start = np.cumsum(n) - n
    repeated = (xy[start[ring] + (np.arange(len(xy)) - start[ring] + 1) % n[ring]] == xy).all(axis=1)
    distinct = np.bincount(ring, weights=repeated, minlength=len(rings)) == 0
    if repeated.any():  # a vertex like the next one: once
        xy, ring = xy[~repeated], ring[~repeated]
        n = np.bincount(ring, minlength=len(rings))
        start = np.cumsum(n) - n
    following = start[ring] + (np.arange(len(xy)) - start[ring] + 1) % n[ring]
    step = xy[following] - xy
    if ((step[:, 0] != 0) & (step[:, 1] != 0)).any():
        raise ValueError("a traced boundary runs along pixel sides only")
    inner_counts, inner = nodes.between(xy, xy[following])
    sizes = 1 + inner_counts
    vertex_at = np.cumsum(sizes) - sizes
    corners = np.empty((int(sizes.sum()), 2), dtype=np.int64)
    vertex = np.zeros(len(corners), dtype=bool)
    vertex[vertex_at] = True
    corners[vertex_at] = xy
    corners[~vertex] = inner
    is_node = np.ones(len(corners), dtype=bool)
    is_node[vertex_at] = nodes.holds(xy)
    return corners, np.repeat(ring, sizes), owner, vertex, is_node, distinct


def _runs(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The indices start, start + 1, …, start + size - 1 of each run, one after the other."""
    total = int(sizes.sum())
    return np.repeat(starts - (np.cumsum(sizes) - sizes), sizes) + np.arange(total)


class Coverage:
    """The sections of a set of traced polygons (pixel coordinates) and their simplified lines."""

    def __init__(self, polygons: np.ndarray, nodes: Nodes, tolerance: float, fixed: np.ndarray | None = None):
        """`nodes`: those of the raster (at least all on these polygons); `tolerance`: of the simplification,
        in pixels; `fixed`: polygons never simplified, nor their neighbours where they touch them (no data)."""
        self.polygons = polygons
        self.fixed = np.zeros(len(polygons), dtype=bool) if fixed is None else fixed
        corners, ring, self.ring_owner, vertex, nodes_here, distinct = _ring_corners(polygons, nodes)
        self.ring_count = len(self.ring_owner)
        self.holed = shapely.get_num_interior_rings(polygons) > 0  # (`sound` judges these polygons whole)
        self.is_hole = np.ones(self.ring_count, dtype=bool)
        self.is_hole[np.unique(self.ring_owner, return_index=True)[1]] = False  # a polygon's first ring: its outline
        keys = nodes.key(corners)
        ring_size = np.bincount(ring, minlength=self.ring_count)
        ring_start = np.cumsum(ring_size) - ring_size
        # a polygon whose vertices are its turns and nodes, and no other corner, is as its traced sections
        # make it: it is taken as it is where they are all traced
        position = np.arange(len(keys)) - ring_start[ring]
        before = ring_start[ring] + (position - 1) % ring_size[ring]
        after = ring_start[ring] + (position + 1) % ring_size[ring]
        turn = (np.sign(corners[after] - corners) != np.sign(corners - corners[before])).any(axis=1)
        as_made = distinct & (np.bincount(ring, weights=vertex != (turn | nodes_here), minlength=self.ring_count) == 0)
        self.as_traced = np.ones(len(polygons), dtype=bool)
        np.logical_and.at(self.as_traced, self.ring_owner, as_made)
        nodes = nodes_here
        # each ring is walked from its first node, or from its least corner when it has none
        node_at = np.flatnonzero(nodes)
        first = np.full(self.ring_count, -1, dtype=np.int64)
        rings_with_nodes, at = np.unique(ring[node_at], return_index=True)
        first[rings_with_nodes] = node_at[at]
        least_key = np.minimum.reduceat(keys, ring_start)
        at_least = np.flatnonzero(keys == least_key[ring])
        least = at_least[np.unique(ring[at_least], return_index=True)[1]]
        first = np.where(first >= 0, first, least)
        order = ring_start[ring] + (position + first[ring] - ring_start[ring]) % ring_size[ring]
        corners, keys, nodes = corners[order], keys[order], nodes[order]
        nodes[ring_start] = True
        # sections: from each node (or ring start) to the next, the last one of a ring back to its start
        begin = np.flatnonzero(nodes)
        section_ring = ring[begin]
        size = np.append(begin[1:], len(keys)) - begin  # corners, without the end
        ring_end = ring_start[section_ring] + ring_size[section_ring]
        end = np.where(begin + size < ring_end, begin + size, ring_start[section_ring])
        second = np.where(size >= 2, begin + 1, end)
        before_end = begin + size - 1
        reverse = (keys[begin] > keys[end]) | ((keys[begin] == keys[end]) & (keys[second] > keys[before_end]))
        # a section is known by its first pixel side walked in its own direction: one side, one section
        head = np.where(reverse, end, begin)
        step = np.sign(corners[np.where(reverse, before_end, second)] - corners[head])
        direction = (step[:, 0] == -1) * 1 + (step[:, 1] == 1) * 2 + (step[:, 1] == -1) * 3
        section_key = keys[head] * 4 + direction
        self.keys, first_seen, self.section = np.unique(section_key, return_index=True, return_inverse=True)
        self.section_ring, self.reverse = section_ring, reverse
        # each section's line once, in its own direction
        starts, sizes = begin[first_seen], size[first_seen] + 1  # corners with the end
        index = _runs(starts, sizes)
        run_start = np.cumsum(sizes) - sizes
        index[run_start + sizes - 1] = end[first_seen]
        along = np.arange(len(index)) - np.repeat(run_start, sizes)
        backwards = np.repeat(reverse[first_seen], sizes)
        index = index[np.where(backwards, np.repeat(run_start + sizes - 1, sizes) - along, np.arange(len(index)))]
        line = np.repeat(np.arange(len(starts)), sizes)
        xy = corners[index]
        # traced: without the corners where the line runs straight on
        turns = np.ones(len(xy), dtype=bool)
        middle = np.ones(len(xy), dtype=bool)
        middle[run_start] = middle[run_start + sizes - 1] = False
        at = np.flatnonzero(middle)
        turns[at] = (np.sign(xy[at] - xy[at - 1]) != np.sign(xy[at + 1] - xy[at])).any(axis=1)
        traced_xy, traced_line = xy[turns], line[turns]
        traced_size = np.bincount(traced_line, minlength=len(starts))
        # simplified: Douglas-Peucker (GEOS) on the lines that turn (a closed one it never collapses)
        movable = np.flatnonzero(traced_size >= 3)
        pick = np.isin(traced_line, movable)
        lines = shapely.linestrings(traced_xy[pick].astype(np.float64),
                                    indices=np.searchsorted(movable, traced_line[pick]))
        simple_xy, simple_line = shapely.get_coordinates(shapely.simplify(lines, tolerance, preserve_topology=False),
                                                         return_index=True)
        simple_size = np.bincount(simple_line, minlength=len(movable))
        self.moves = np.zeros(len(starts), dtype=bool)  # simplifying changes the section
        self.moves[movable] = simple_size < traced_size[movable]
        moving = self.moves[movable]
        # both in one pool of corners: each section's traced line, and where it moves its simplified one
        self.pool = np.concatenate([traced_xy, np.rint(simple_xy[moving[simple_line]]).astype(np.int64)])
        self.traced_size = traced_size
        self.traced_start = np.cumsum(traced_size) - traced_size
        self.simple_size, self.simple_start = traced_size.copy(), self.traced_start.copy()
        sizes_moving = simple_size[moving]
        self.simple_size[movable[moving]] = sizes_moving
        self.simple_start[movable[moving]] = len(traced_xy) + np.cumsum(sizes_moving) - sizes_moving
        self.traced_rings = shapely.get_rings(polygons)

    def _rings(self, simplified: np.ndarray, rings: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The rings (all, or those selected) made of each section's simplified line where `simplified`,
        its traced one elsewhere; and whether each could be made (3 corners or more; else None)."""
        line_start = np.where(simplified, self.simple_start, self.traced_start)
        line_size = np.where(simplified, self.simple_size, self.traced_size)
        occurrences = np.arange(len(self.section)) if rings is None else np.flatnonzero(rings[self.section_ring])
        section = self.section[occurrences]
        taken = line_size[section] - 1  # each section's corners without its end (the next one's start)
        along = _runs(np.zeros(len(section), dtype=np.int64), taken)
        flip = np.repeat(self.reverse[occurrences], taken)
        start, size = np.repeat(line_start[section], taken), np.repeat(line_size[section], taken)
        coords = self.pool[np.where(flip, start + size - 1 - along, start + along)].astype(np.float64)
        ring = np.repeat(self.section_ring[occurrences], taken)
        ids, ring_index = np.unique(ring, return_inverse=True)
        corner_count = np.bincount(ring_index, minlength=len(ids))
        made = corner_count >= 3
        out = np.full(self.ring_count, None, dtype=object)
        ok = np.zeros(self.ring_count, dtype=bool)
        good = made[ring_index]
        if good.any():
            kept_ids, kept_index = np.unique(ring_index[good], return_inverse=True)
            out[ids[kept_ids]] = shapely.linearrings(coords[good], indices=kept_index)
        ok[ids[made]] = True
        return out, ok

    def _polygons(self, simplified: np.ndarray, which: np.ndarray) -> np.ndarray:
        """Polygons `which` (booleans) from their rings as in `_rings` (None where a ring could not be
        made)."""
        ring_selected = which[self.ring_owner]
        rings, made = self._rings(simplified, ring_selected)
        whole = which.copy()
        np.logical_and.at(whole, self.ring_owner[ring_selected], made[ring_selected])
        build = ring_selected & whole[self.ring_owner]
        out = np.full(len(self.polygons), None, dtype=object)
        if build.any():
            ids, index = np.unique(self.ring_owner[build], return_inverse=True)
            out[ids] = shapely.polygons(rings[build], indices=index)
        return out

    def _moving(self, sections: np.ndarray) -> np.ndarray:
        """Which rings have one of the `sections` (booleans) among theirs, simplified other than traced."""
        out = np.zeros(self.ring_count, dtype=bool)
        out[self.section_ring[(sections & self.moves)[self.section]]] = True
        return out

    def sound(self, simplified: np.ndarray, check: np.ndarray) -> np.ndarray:
        """Whether each ring to `check`, with the `simplified` sections simplified, is a simple ring keeping
        its traced area within `MAX_AREA_CHANGE`, in a valid polygon that keeps its own area within it too
        (else its holes are unsound, and if that is not enough all its rings); the others count as sound."""
        rings, made = self._rings(simplified, check)
        sound = np.ones(self.ring_count, dtype=bool)
        sound[check] = made[check]
        built = check & made
        shapes = shapely.polygons(rings[built])
        traced_area = shapely.area(shapely.polygons(self.traced_rings[built]))
        sound[built] = shapely.is_valid(shapes) & (np.abs(shapely.area(shapes) - traced_area)
                                                   <= MAX_AREA_CHANGE * traced_area)
        holed = np.zeros(len(self.polygons), dtype=bool)
        holed[self.ring_owner[check]] = True
        holed &= self.holed
        if holed.any():  # those polygons as they would be: valid, and keeping their area (a thin ring-shaped
            mine = holed[self.ring_owner]  # region whose outline grows and hole shrinks gains more than either):
            rings, made = self._rings(simplified, mine)  # if not, with their holes traced; if still not, traced
            ids, index = np.unique(self.ring_owner[mine], return_inverse=True)
            traced_area = shapely.area(self.polygons[ids])
            for unsound in (self.is_hole, np.ones(self.ring_count, dtype=bool)):
                chosen = np.where((sound & made)[mine], rings[mine], self.traced_rings[mine])
                shapes = shapely.polygons(chosen, indices=index)
                bad = ~shapely.is_valid(shapes) | (np.abs(shapely.area(shapes) - traced_area)
                                                   > MAX_AREA_CHANGE * traced_area)
                sound[mine & unsound & np.isin(self.ring_owner, ids[bad])] = False
        return sound

    def decide(self, levels: int, traced_keys: list[np.ndarray] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Which sections are simplified, level by level: at the first, those whose rings are all sound
        with every section simplified; at each next one, those whose rings are all still sound with the
        previous level's sections simplified; a section among the level's `traced_keys` (decided traced
        by a neighbour not here) is not. Returns each level's (sections simplified, rings sound). Only the
        rings that simplifying changes are judged, and at each next level only those whose sections changed."""
        simplified = np.ones(len(self.keys), dtype=bool)
        sound = ~self.fixed[self.ring_owner]
        check = self._moving(simplified) & sound
        out = []
        for level in range(levels):
            sound = sound & self.sound(simplified, check)
            previous = simplified
            simplified = np.ones(len(self.keys), dtype=bool)
            np.logical_and.at(simplified, self.section, sound[self.section_ring])
            if traced_keys is not None and len(traced_keys[level]):
                simplified &= ~np.isin(self.keys, traced_keys[level])
            out.append((simplified, sound))
            check = sound & self._moving(previous & ~simplified)
        return out

    def keys_unsound_beside(self, sound: np.ndarray, by: np.ndarray, beside: np.ndarray) -> np.ndarray:
        """The keys of the sections that bound a polygon `beside` and a ring not `sound` of a polygon `by`."""
        polygon = self.ring_owner[self.section_ring]
        unsound, near = np.zeros(len(self.keys), dtype=bool), np.zeros(len(self.keys), dtype=bool)
        unsound[self.section[by[polygon] & ~sound[self.section_ring]]] = True
        near[self.section[beside[polygon]]] = True
        return self.keys[unsound & near]

    def outlines(self, simplified: np.ndarray, which: np.ndarray) -> np.ndarray:
        """Polygons `which` made of their sections — the `simplified` ones' simplified lines, the others'
        traced ones: neighbours share every corner of their boundaries — normalised (`shapely.normalize`);
        one still invalid (rare) is made of its sections' traced lines."""
        changed = np.zeros(len(self.polygons), dtype=bool)
        changed[self.ring_owner[self._moving(simplified)]] = True
        out = self._polygons(simplified, which & (changed | ~self.as_traced))
        out[which & ~changed & self.as_traced] = self.polygons[which & ~changed & self.as_traced]
        bad = which & changed
        bad[bad] = (out[bad] == None) | ~shapely.is_valid(out[bad])  # noqa: E711 (an object array)
        if bad.any():
            out[bad] = self._polygons(np.zeros(len(self.keys), dtype=bool), bad)[bad]
        return shapely.normalize(out[which])
