"""Synthetic aerial-like scenes with exact labels, for tests and benchmarks.

A scene is laid out from global pixel coordinates, so any window of an arbitrarily large raster can
be generated on its own (and a 16k × 16k GeoTIFF written block by block in bounded memory):
water in the west, grass elsewhere, horizontal roads at a fixed spacing, square red roofs on a
grid in the grass. Pixel colours get Gaussian texture.

Labels: 0 water, 1 grass, 2 roof, 3 road.

`random_scene` adds richer random scenes (fields, ponds, roads with cars, buildings and trees with
shadows) with exact masks, object boxes and captions, written by `write_scene_dataset` as an MGRS
dataset, webdataset shards and labelled GeoTIFFs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

LABELS = ("water", "grass", "roof", "road")
COLOURS = np.array([(40, 80, 170), (90, 160, 60), (190, 60, 50), (128, 128, 128)], dtype=np.float32)


def scene_labels(height: int, width: int, rows: slice | None = None, cols: slice | None = None,
                 road_spacing: int | None = None, roof: int | None = None) -> np.ndarray:
    """Labels of the window (rows, cols) of a height × width scene."""
    rows = rows or slice(0, height)
    cols = cols or slice(0, width)
    y = np.arange(rows.start, rows.stop)[:, None]
    x = np.arange(cols.start, cols.stop)[None, :]
    road_spacing = road_spacing or max(32, height)
    half_road = max(2, min(height, road_spacing) // 16)
    roof = roof or max(8, min(height, width, road_spacing) // 4)
    labels = np.ones((len(y), x.shape[1]), dtype=np.uint8)
    west = x < width * 2 // 5
    road_centre = (y % road_spacing) - road_spacing // 2
    road = (np.abs(road_centre) < half_road) & ~west
    period = roof * 3 // 2
    band = (y % road_spacing) - road_spacing // 16
    roof_rows = ((band >= 0) & (band < roof)) | ((band - road_spacing // 2 - half_road >= 0)
                                                  & (band - road_spacing // 2 - half_road < roof))
    roof_cols = ((x - width // 2) >= 0) & (((x - width // 2) % period) < roof)
    labels = np.where(west, 0, labels)
    labels = np.where(roof_rows & roof_cols & ~west & ~road, 2, labels)
    labels = np.where(road, 3, labels)
    return labels.astype(np.uint8)


def render(labels: np.ndarray, seed: int = 0, noise: float = 12.0) -> np.ndarray:
    """RGB uint8 [3, h, w] for a label window."""
    rng = np.random.default_rng(seed)
    rgb = COLOURS[labels].transpose(2, 0, 1)
    rgb = rgb + rng.normal(0, noise, rgb.shape).astype(np.float32)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def scene(height: int, width: int, seed: int = 0, **layout) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 [3, H, W], labels [H, W]) of a whole scene."""
    labels = scene_labels(height, width, **layout)
    return render(labels, seed), labels


def class_polygons(labels: np.ndarray, transform, rows: slice | None = None, per_class: int | None = None,
                   shrink: float = 0.0) -> tuple[list, list[str]]:
    """Polygons of the true classes of a scene's `labels` (in `transform`'s coordinates), within `rows`:
    the `per_class` largest of each class (all when None), each shrunk by `shrink` units (labels drawn
    a little inside the edges). Returns (geometries, class names)."""
    import shapely
    from rasterio.features import shapes

    mask = np.zeros_like(labels, dtype=bool)
    mask[rows or slice(None)] = True
    found: dict[int, list] = {}
    for geom, value in shapes(labels, mask=mask, transform=transform):
        found.setdefault(int(value), []).append(shapely.geometry.shape(geom))
    geoms, names = [], []
    for value, polys in sorted(found.items()):
        for poly in (sorted(polys, key=lambda p: -p.area)[:per_class] if per_class else polys):
            inner = poly.buffer(-shrink) if shrink else poly
            if not inner.is_empty:
                geoms.append(inner)
                names.append(LABELS[value])
    return geoms, names


def write_scene_geotiff(path: str | Path, height: int, width: int, res: float = 0.5, crs: str = "EPSG:32633",
                        origin: tuple[float, float] = (500000.0, 5200000.0), block: int = 2048, seed: int = 0,
                        **layout) -> Path:
    """Write a large scene as a tiled GeoTIFF, block by block (memory independent of the size)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = dict(driver="GTiff", height=height, width=width, count=3, dtype="uint8", crs=crs,
                   transform=from_origin(origin[0], origin[1], res, res), tiled=True, blockxsize=512,
                   blockysize=512, compress="deflate", BIGTIFF="IF_SAFER", photometric="RGB")
    with rasterio.open(path, "w", **profile) as dst:
        for y in range(0, height, block):
            for x in range(0, width, block):
                rows, cols = slice(y, min(y + block, height)), slice(x, min(x + block, width))
                labels = scene_labels(height, width, rows, cols, **layout)
                dst.write(render(labels, seed + y * 7919 + x), window=Window(x, y, cols.stop - x, rows.stop - y))
    return Path(path)


# --- random scenes with objects: masks, boxes, categories, captions ---------------------------------

SCENE_CLASSES = ("grass", "water", "road", "building", "tree", "field", "car")
_SCENE_COLOURS = {"grass": (95, 150, 70), "water": (35, 75, 150), "road": (125, 125, 120),
                  "building": (185, 70, 55), "tree": (30, 85, 35), "field": (200, 180, 95), "car": (230, 230, 235)}


def random_scene(size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(RGB uint8 [size, size, 3], class mask [size, size] indexing SCENE_CLASSES, objects) of a random
    scene: a field, a pond, a road with cars, buildings and trees with shadows. Objects (buildings,
    trees, cars, and the field, pond, a stretch of road and a grass patch where their box is mostly
    that cover) come with pixel boxes {x1, y1, x2, y2} and their category."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), dtype=np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    index = {name: i for i, name in enumerate(SCENE_CLASSES)}
    # field (striped texture later) and a pond
    fx, fy = rng.integers(0, size // 2, 2)
    mask[fy:fy + size // 3, fx:fx + size // 3] = index["field"]
    cx, cy, r = rng.integers(size // 4, 3 * size // 4, 2).tolist() + [int(rng.integers(size // 10, size // 6))]
    mask[(xx - cx) ** 2 / 1.5 + (yy - cy) ** 2 < r * r] = index["water"]
    # a road across, horizontal or vertical
    road_at, half = int(rng.integers(size // 5, 4 * size // 5)), max(3, size // 32)
    vertical = bool(rng.integers(0, 2))
    road = (np.abs(xx - road_at) < half) if vertical else (np.abs(yy - road_at) < half)
    mask[road] = index["road"]
    objects: list[dict] = []
    shadow = np.zeros((size, size), dtype=bool)

    def free(x1, y1, x2, y2) -> bool:
        return bool((mask[y1:y2, x1:x2] == index["grass"]).all())

    for _ in range(int(rng.integers(2, 6))):  # buildings
        w, h = (int(v) for v in rng.integers(size // 12, size // 5, 2))
        x1, y1 = (int(v) for v in rng.integers(0, size - max(w, h) - 4, 2))
        if free(x1, y1, x1 + w + 3, y1 + h + 3):
            shadow[y1 + 3:y1 + h + 3, x1 + 3:x1 + w + 3] = True
            mask[y1:y1 + h, x1:x1 + w] = index["building"]
            objects.append({"bbox": {"x1": x1, "y1": y1, "x2": x1 + w, "y2": y1 + h}, "category": "building"})
    for _ in range(int(rng.integers(3, 10))):  # trees
        rad = int(rng.integers(size // 40 + 2, size // 16 + 3))
        tx, ty = (int(v) for v in rng.integers(rad, size - rad - 3, 2))
        disc = (xx - tx) ** 2 + (yy - ty) ** 2 < rad * rad
        if (mask[disc] == index["grass"]).all():
            shadow |= (xx - tx - 2) ** 2 + (yy - ty - 2) ** 2 < rad * rad
            mask[disc] = index["tree"]
            objects.append({"bbox": {"x1": tx - rad, "y1": ty - rad, "x2": tx + rad, "y2": ty + rad}, "category": "tree"})
    for _ in range(int(rng.integers(1, 5))):  # cars on the road
        length, width = max(6, size // 24), max(3, size // 48)
        along = int(rng.integers(0, size - length))
        if vertical:
            x1, y1, x2, y2 = road_at - width // 2, along, road_at - width // 2 + width, along + length
        else:
            x1, y1, x2, y2 = along, road_at - width // 2, along + length, road_at - width // 2 + width
        if (mask[y1:y2, x1:x2] == index["road"]).all():
            shadow[y1 + 1:y2 + 1, x1 + 1:x2 + 1] = True
            mask[y1:y2, x1:x2] = index["car"]
            objects.append({"bbox": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}, "category": "car"})
    # land-cover regions as objects too (as MGRS holds "harbor" or "farmland" boxes): the field, the pond,
    # a stretch of road and a patch of grass, kept where the box is mostly that cover
    candidates = [("field", fx, fy, fx + size // 3, fy + size // 3),
                  ("water", cx - int(r * 1.22), cy - r, cx + int(r * 1.22) + 1, cy + r + 1)]
    stretch = int(rng.integers(0, size - 6 * half))
    candidates.append(("road", road_at - half, stretch, road_at + half, stretch + 6 * half) if vertical
                      else ("road", stretch, road_at - half, stretch + 6 * half, road_at + half))
    for _ in range(4):
        side = int(rng.integers(size // 10, size // 5))
        gx, gy = (int(v) for v in rng.integers(0, size - side, 2))
        candidates.append(("grass", gx, gy, gx + side, gy + side))
    for category, x1, y1, x2, y2 in candidates:
        x1, y1, x2, y2 = max(int(x1), 0), max(int(y1), 0), min(int(x2), size), min(int(y2), size)
        if x2 - x1 > 2 and y2 - y1 > 2 and (mask[y1:y2, x1:x2] == index[category]).mean() >= 0.75:
            objects.append({"bbox": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}, "category": category})
            if category == "grass":
                break  # one grass patch is enough
    colours = np.array([_SCENE_COLOURS[n] for n in SCENE_CLASSES], dtype=np.float32)
    rgb = colours[mask]
    stripes = (np.sin(yy / 2.5) * 12)[..., None] * (mask == index["field"])[..., None]
    rgb = rgb + stripes + rng.normal(0, 8, rgb.shape)
    shade = shadow & np.isin(mask, [index["grass"], index["road"], index["field"]])
    rgb[shade] *= 0.55
    return np.clip(rgb, 0, 255).astype(np.uint8), mask, objects


def write_scene_dataset(out: str | Path, count: int, size: int = 256, seed: int = 0) -> dict[str, Path]:
    """The same `count` random scenes as an MGRS dataset (`mgrs/text_info.json`), webdataset shards
    (`shards/{0000..}.tar`, image + caption) and labelled GeoTIFFs (`geotiff/*.tif` + `*_label.tif`)."""
    import io
    import json
    import tarfile

    import rasterio
    from PIL import Image
    from rasterio.transform import from_origin

    from training.data.captions import TemplateCaptioner

    out = Path(out)
    for folder in ("mgrs/images", "shards", "geotiff"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    captioner = TemplateCaptioner()
    records, per_shard, tar = [], 8, None
    ids = {name: i for i, name in enumerate(SCENE_CLASSES)}
    for n in range(count):
        rgb, mask, objects = random_scene(size, seed + n)
        image = Image.fromarray(rgb)
        key = f"scene{n:05d}"
        image.save(out / "mgrs" / "images" / f"{key}.png")
        for o in objects:
            o["bbox"].update(W=size, H=size)
            o["category_id"] = ids[o["category"]]
        caption = captioner(image, objects)
        records.append({"global_filepath": f"images/{key}.png", "global_caption": caption["detailed_caption"],
                        **caption, "segment": objects})
        if n % per_shard == 0:
            if tar is not None:
                tar.close()
            tar = tarfile.open(out / "shards" / f"{n // per_shard:04d}.tar", "w")
        for suffix, payload in (("png", _png_bytes(image, io)), ("txt", caption["detailed_caption"].encode())):
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        profile = dict(driver="GTiff", height=size, width=size, crs="EPSG:32633",
                       transform=from_origin(500000 + 1000 * n, 5200000, 0.5, 0.5))
        with rasterio.open(out / "geotiff" / f"{key}.tif", "w", count=3, dtype="uint8", **profile) as dst:
            dst.write(rgb.transpose(2, 0, 1))
        with rasterio.open(out / "geotiff" / f"{key}_label.tif", "w", count=1, dtype="uint8", **profile) as dst:
            dst.write(mask[None])
            dst.update_tags(CLASSES=json.dumps(SCENE_CLASSES))
    if tar is not None:
        tar.close()
    (out / "mgrs" / "text_info.json").write_text(json.dumps(records), encoding="utf-8")
    return {"mgrs": out / "mgrs" / "text_info.json", "shards": out / "shards", "geotiff": out / "geotiff"}


def _png_bytes(image, io) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
