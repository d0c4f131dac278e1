"""Teaching classes from a few labelled polygons, and checking accuracy against reference polygons,
as a user runs them: `classes learn` → `segment --classes @site.classes.json` → `accuracy`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from engine.cli import main
from engine.geo.vectors import read_labels, write_features
from tests.engine.conftest import TINY, make_clip
from tests.engine.rasters import scene, write_raster
from training.data.synthetic import LABELS, class_polygons

CLASSES = "; ".join(LABELS)  # water; grass; roof; road — names a random network cannot read


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A 512 x 384 px scene (0.5 m), its exact labels, a tiny random checkpoint, and polygons of the
    true classes: at most 5 per class from the top half (to teach) and all of the bottom half (to check)."""
    import torch

    folder = tmp_path_factory.mktemp("site")
    data, truth = scene(512, 384, seed=3, road_spacing=128)
    raster = write_raster(folder / "site.tif", data)
    checkpoint = folder / "tiny.pt"
    torch.save({"state_dict": make_clip(seed=1).state_dict()}, checkpoint)
    with rasterio.open(raster) as ds:
        transform, crs = ds.transform, ds.crs
    half = truth.shape[0] // 2

    def write(name: str, geoms, names) -> Path:
        path = folder / name
        fields = {"class": np.array(names, dtype=object)}
        write_features(path, geoms, fields, crs, "labels")
        return path

    labels = write("labels.gpkg", *class_polygons(truth, transform, slice(0, half), per_class=5, shrink=1.0))
    reference = write("reference.gpkg", *class_polygons(truth, transform, slice(half, None)))
    return {"folder": folder, "raster": raster, "checkpoint": checkpoint, "labels": labels, "reference": reference,
            "truth": truth}


def _model(site):
    return ["--model", str(site["checkpoint"]), "--arch", TINY, "-q"]


def _miou(site, capsys, classes: str, name: str) -> dict:
    folder = site["folder"]
    assert main(["segment", str(site["raster"]), "--classes", classes, "-o", str(folder / name), "--gsd", "0.5",
                 "--no-polygons", *_model(site)]) == 0, capsys.readouterr().err
    assert main(["accuracy", str(folder / name / "site_classes.tif"), "--reference", str(site["reference"]),
                 "-o", str(folder / name / "accuracy"), "-q"]) == 0, capsys.readouterr().err
    return json.loads((folder / name / "accuracy" / "accuracy.json").read_text())


def test_a_few_labelled_polygons_teach_classes_the_names_alone_miss(site, capsys):
    taught = site["folder"] / "site.classes.json"
    code = main(["classes", "learn", str(site["raster"]), "--classes", CLASSES, "--labels", str(site["labels"]),
                 "--field", "class", "-o", str(taught), "--gsd", "0.5", *_model(site)])
    assert code == 0, capsys.readouterr().err
    saved = json.loads(taught.read_text())
    assert set(saved["prototypes"]) == set(LABELS) and max(saved["made"]["polygons"].values()) <= 5
    text_only = _miou(site, capsys, CLASSES, "text")
    with_labels = _miou(site, capsys, f"@{taught}", "taught")
    # held out: the bottom half of the raster, which no label touched
    assert with_labels["miou"] >= 0.5, with_labels
    assert with_labels["miou"] >= text_only["miou"] + 0.2, (text_only["miou"], with_labels["miou"])
    assert saved["alpha"] > 0  # the labels were given weight because they helped on held-out labels


def _grid_accuracy(site, capsys, classes: str, name: str) -> float:
    """`farslip classify --cell-px 32`, then the share of the bottom half's cells (no label there)
    whose class is the one most of their pixels truly are."""
    from pyogrio.raw import read

    out = site["folder"] / name
    assert main(["classify", str(site["raster"]), "--classes", classes, "--cell-px", "32", "-o", str(out),
                 *_model(site)]) == 0, capsys.readouterr().err
    meta, _, _, columns = read(out / "site_grid.gpkg")
    grid = dict(zip(meta["fields"], columns))
    truth, half = site["truth"], site["truth"].shape[0] // 2
    right = total = 0
    for row, col, predicted in zip(grid["row"], grid["col"], grid["class"]):
        if row * 32 < half:
            continue
        cell = truth[row * 32:(row + 1) * 32, col * 32:(col + 1) * 32]
        right += predicted == LABELS[np.bincount(cell.ravel(), minlength=len(LABELS)).argmax()]
        total += 1
    return right / total


def test_taught_classes_classify_grid_cells_the_names_alone_miss(site, capsys):
    taught = site["folder"] / "grid.classes.json"
    assert main(["classes", "learn", str(site["raster"]), "--classes", CLASSES, "--labels", str(site["labels"]),
                 "-o", str(taught), "--gsd", "0.5", *_model(site)]) == 0, capsys.readouterr().err
    names_only = _grid_accuracy(site, capsys, CLASSES, "grid_text")
    with_labels = _grid_accuracy(site, capsys, f"@{taught}", "grid_taught")
    assert with_labels >= 0.5 and with_labels >= names_only + 0.2, (names_only, with_labels)


def test_taught_classes_from_another_model_are_refused_in_one_line(site, capsys, tmp_path):
    import torch

    taught = site["folder"] / "other.classes.json"
    assert main(["classes", "learn", str(site["raster"]), "--classes", CLASSES, "--labels", str(site["labels"]),
                 "-o", str(taught), *_model(site)]) == 0
    other = tmp_path / "other.pt"
    torch.save({"state_dict": make_clip(seed=7).state_dict()}, other)
    capsys.readouterr()
    code = main(["segment", str(site["raster"]), "--classes", f"@{taught}", "-o", str(tmp_path / "out"),
                 "--model", str(other), "--arch", TINY, "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "made with model" in err[0] and "teach them again" in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_accuracy_matches_the_confusion_of_the_pixels_themselves(tmp_path, capsys):
    """A hand-made class raster and reference polygons; every figure is recomputed here from the pixels."""
    rng = np.random.default_rng(0)
    truth = np.zeros((60, 90), dtype=np.uint8)
    truth[:, 30:60], truth[:, 60:] = 1, 2
    predicted = truth.copy()
    flip = rng.random(truth.shape) < 0.2
    predicted[flip] = rng.integers(0, 3, flip.sum())
    predicted[:5, :5] = 255  # no class
    transform = from_origin(500000.0, 5200000.0, 1.0, 1.0)
    classes = [{"index": i, "name": n, "synonyms": [n, f"{n} area"]} for i, n in enumerate(["water", "grass", "roof"])]
    raster = tmp_path / "m_classes.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=90, height=60, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=transform, nodata=255) as ds:
        ds.write(predicted, 1)
        ds.update_tags(FARSLIP_CLASSES=json.dumps(classes))
    geoms = [shapely.box(*rasterio.transform.array_bounds(60, 30, transform @ rasterio.Affine.translation(30 * i, 0)))
             for i in range(3)]
    write_features(tmp_path / "ref.gpkg", [*geoms, shapely.box(500000, 5199990, 500001, 5199991)],
                   {"class": np.array(["WATER", "grass area", "roof", "cloud"], dtype=object)},
                   rasterio.crs.CRS.from_epsg(32633), "ref")
    assert main(["accuracy", str(raster), "--reference", str(tmp_path / "ref.gpkg"), "-o", str(tmp_path / "acc"),
                 "-q"]) == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "acc" / "accuracy.json").read_text())
    labelled = truth.size
    for i, c in enumerate(classes):
        tp = np.sum((truth == i) & (predicted == i))
        union = np.sum(truth == i) + np.sum(predicted == i) - tp
        assert report["per_class"][c["name"]]["iou"] == pytest.approx(tp / union, abs=1e-4)
        assert report["per_class"][c["name"]]["recall"] == pytest.approx(tp / np.sum(truth == i), abs=1e-4)
    oa = np.mean(truth == predicted)
    chance = sum(np.sum(truth == i) * np.sum(predicted == i) for i in range(3)) / labelled**2
    assert report["overall_accuracy"] == pytest.approx(oa, abs=1e-4)
    assert report["kappa"] == pytest.approx((oa - chance) / (1 - chance), abs=1e-4)
    assert report["no_class_pixels"] == 25 and report["skipped_labels"] == {"cloud": 1}
    rows = (tmp_path / "acc" / "confusion.csv").read_text().splitlines()
    assert rows[0].split(",")[1:] == ["water", "grass", "roof", "no class"]
    assert sum(int(v) for row in rows[1:] for v in row.split(",")[1:]) == labelled
    from PIL import Image

    assert Image.open(tmp_path / "acc" / "confusion.png").size[0] > 200


def _one_line_error(capsys, args) -> str:
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("farslip: error:"), err
    return err[0]


def test_teaching_from_labels_users_really_have(site, capsys, tmp_path):
    """Labels drawn as points, a GeoJSON in metres without a CRS (read as WGS 84), an output folder
    not made yet or a folder given as the file: one line each, before the work or instead of losing it."""
    learn = ["classes", "learn", str(site["raster"]), "--classes", CLASSES, *_model(site)]
    made = tmp_path / "not" / "yet" / "site.classes.json"
    assert main([*learn, "--labels", str(site["labels"]), "-o", str(made)]) == 0  # the folder is made
    assert json.loads(made.read_text())["classes"]
    folder = tmp_path / "taken.classes.json"
    folder.mkdir()
    assert "is a folder" in _one_line_error(capsys, [*learn, "--labels", str(site["labels"]), "-o", str(folder)])

    geoms, values, crs = read_labels(str(site["labels"]), "class")
    points = tmp_path / "points.gpkg"
    write_features(points, [g.representative_point() for g in geoms], {"class": np.array(values, dtype=object)},
                   rasterio.crs.CRS.from_user_input(crs), "labels")
    assert "points, not polygons" in _one_line_error(capsys, [*learn, "--labels", str(points), "-o",
                                                              str(tmp_path / "p.classes.json")])
    metres = tmp_path / "metres.geojson"  # UTM coordinates in a GeoJSON that declares no CRS
    metres.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"class": v}, "geometry": shapely.geometry.mapping(g)}
        for g, v in zip(geoms, values)]}))
    line = _one_line_error(capsys, [*learn, "--labels", str(metres), "-o", str(tmp_path / "m.classes.json")])
    assert "no label overlaps the raster" in line and "without a CRS is read as WGS 84" in line
    far = tmp_path / "far.geojson"  # a coordinate GEOS overflows on
    far.write_text(json.dumps({"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {
        "class": "water"}, "geometry": shapely.geometry.mapping(shapely.box(-1e300, -1e300, 1e300, 1e300))}]}))
    line = _one_line_error(capsys, [*learn, "--labels", str(far), "-o", str(tmp_path / "f.classes.json")])
    assert line.endswith(f"{far} has a coordinate that is not a number within ±1e+15"), line
    unknown = tmp_path / "unknown.gpkg"  # labels in another vocabulary
    write_features(unknown, geoms[:2], {"class": np.array(["Forest", "forest "], dtype=object)},
                   rasterio.crs.CRS.from_user_input(crs), "labels")
    line = _one_line_error(capsys, [*learn, "--labels", str(unknown), "-o", str(tmp_path / "u.classes.json")])
    assert f"no label names a class: the labels say Forest; the classes are {CLASSES.replace(';', ',')}" in line
    with rasterio.open(site["raster"]) as ds:  # labels drawn over the part of the raster that holds no data
        data, transform = ds.read(), ds.transform
    data[:, :128, :128] = 0
    holed = write_raster(tmp_path / "holed.tif", data, nodata=0)
    on_hole = tmp_path / "on_hole.gpkg"
    write_features(on_hole, [shapely.box(*(transform @ (10, 100)), *(transform @ (100, 10)))],
                   {"class": np.array(["water"], dtype=object)}, rasterio.crs.CRS.from_user_input(crs), "labels")
    line = _one_line_error(capsys, ["classes", "learn", str(holed), "--classes", CLASSES, *_model(site), "--labels",
                                    str(on_hole), "-o", str(tmp_path / "h.classes.json")])
    assert line.endswith("no class has the 2 labelled patches it needs: water (on no data)"), line
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob(".*.partial"))

    edited = json.loads(made.read_text())
    edited["made"]["global_bias"] = "x"  # a file edited by hand
    bad = tmp_path / "edited.classes.json"
    bad.write_text(json.dumps(edited))
    for command in (["classify", str(site["raster"]), "--classes", f"@{bad}", "--cell", "50"],
                    ["segment", str(site["raster"]), "--classes", f"@{bad}"]):
        line = _one_line_error(capsys, [*command, "-o", str(tmp_path / "out"), *_model(site)])
        assert "edited.classes.json" in line and "made.global_bias 'x'" in line


def test_accuracy_against_references_users_really_have(tmp_path, capsys):
    """References wholly off the raster (an error, not a report of NaN), polygons of two classes that
    overlap (their shared pixels left out and counted: the last drawn no longer wins), -o a file."""
    transform = from_origin(500000.0, 5200000.0, 1.0, 1.0)
    classes = [{"index": i, "name": n, "synonyms": [n]} for i, n in enumerate(["water", "grass"])]
    raster = tmp_path / "m_classes.tif"
    with rasterio.open(raster, "w", driver="GTiff", width=40, height=20, count=1, dtype="uint8", crs="EPSG:32633",
                       transform=transform, nodata=255) as ds:
        ds.write(np.repeat(np.array([[0] * 20 + [1] * 20], dtype=np.uint8), 20, axis=0), 1)
        ds.update_tags(FARSLIP_CLASSES=json.dumps(classes))
    utm = rasterio.crs.CRS.from_epsg(32633)
    far = tmp_path / "far.gpkg"
    write_features(far, [shapely.box(600000, 5100000, 600010, 5100010)], {"class": np.array(["water"], dtype=object)},
                   utm, "ref")
    line = _one_line_error(capsys, ["accuracy", str(raster), "--reference", str(far), "-o", str(tmp_path / "a")])
    assert "no reference polygon overlaps m_classes.tif" in line and not (tmp_path / "a").exists()
    assert "GeoJSON" not in line  # (a hint for GeoJSON files only)

    overlap = tmp_path / "overlap.gpkg"
    write_features(overlap, [shapely.box(500000, 5199980, 500020, 5200000), shapely.box(500010, 5199980, 500040, 5200000)],
                   {"class": np.array(["water", "grass"], dtype=object)}, utm, "ref")
    assert main(["accuracy", str(raster), "--reference", str(overlap), "-o", str(tmp_path / "b"), "-q"]) == 0
    report = json.loads((tmp_path / "b" / "accuracy.json").read_text())
    assert report["conflicting_pixels"] == 10 * 20 and report["labelled_pixels"] == 30 * 20
    assert report["overall_accuracy"] == 1.0  # the undisputed pixels are all right

    (tmp_path / "file").write_text("")
    assert "is a file" in _one_line_error(capsys, ["accuracy", str(raster), "--reference", str(overlap), "-o",
                                                   str(tmp_path / "file")])


def test_the_api_takes_taught_classes_by_path_under_its_folder_policy(site, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from tests.engine.api_helpers import AUTH, make_app, wait_for, write_checkpoint

    served = tmp_path / "served"
    served.mkdir()
    checkpoint = write_checkpoint(served)  # the engine's default model
    taught = served / "site.classes.json"
    assert main(["classes", "learn", str(site["raster"]), "--classes", CLASSES, "--labels", str(site["labels"]),
                 "-o", str(taught), "--model", str(checkpoint), "--arch", TINY, "-q"]) == 0, capsys.readouterr().err
    raster = served / "site.tif"
    raster.write_bytes(site["raster"].read_bytes())
    with TestClient(make_app(served)) as client:
        job = client.post("/v1/jobs/segment", headers=AUTH,
                          json={"input": {"path": str(raster)}, "classes": f"@{taught}", "polygons": False})
        assert job.status_code == 202, job.text
        status = wait_for(client, job.json()["id"])
        assert status["state"] == "done", status
        assert status["summary"]["prompts"] == CLASSES
        outside = client.post("/v1/jobs/segment", headers=AUTH,
                              json={"input": {"path": str(raster)}, "classes": f"@{site['folder'] / 'site.classes.json'}"})
        assert outside.status_code == 403, outside.text


def test_a_client_sends_its_taught_classes_to_an_engine_that_cannot_read_its_files(site, tmp_path, capsys):
    """A remote engine: the taught file lives on the client; POST /v1/classes, then "@upload:<id>"."""
    from fastapi.testclient import TestClient

    from tests.engine.api_helpers import AUTH, make_app, wait_for, write_checkpoint

    served = tmp_path / "served"
    served.mkdir()
    checkpoint = write_checkpoint(served)
    mine = tmp_path / "client" / "site.classes.json"  # outside the engine's folders
    mine.parent.mkdir()
    assert main(["classes", "learn", str(site["raster"]), "--classes", CLASSES, "--labels", str(site["labels"]),
                 "-o", str(mine), "--model", str(checkpoint), "--arch", TINY, "-q"]) == 0, capsys.readouterr().err
    raster = served / "site.tif"
    raster.write_bytes(site["raster"].read_bytes())
    with TestClient(make_app(served)) as client:
        sent = client.post("/v1/classes", headers=AUTH, content=mine.read_bytes())
        assert sent.status_code == 201 and sent.json()["classes"] == list(LABELS), sent.text
        ref = f"@upload:{sent.json()['upload_id']}"
        job = client.post("/v1/jobs/segment", headers=AUTH,
                          json={"input": {"path": str(raster)}, "classes": ref, "polygons": False})
        assert job.status_code == 202, job.text
        assert wait_for(client, job.json()["id"])["state"] == "done"
        # what is not taught classes is refused naming the problem, never a 500
        for bad, words in ((b"not json", "not JSON"), (b'{"format": "x"}', "not a taught-classes file"),
                           (b"[" * 100_000, "not JSON"), (b"", "empty body"),
                           (b'{"format": "farslip-taught-classes/1", "classes": ["a"], "alpha": false, '
                            b'"model": {}, "prototypes": {"a": [1]}}', "alpha"),
                           (b'{"format": "farslip-taught-classes/1", "classes": ["a"], "alpha": 0.5, '
                            b'"model": {}, "prototypes": {"b": [1]}}', "do not match its classes")):
            got = client.post("/v1/classes", headers=AUTH, content=bad)
            assert got.status_code == 400 and words in got.json()["detail"], got.text
        upload = client.post("/v1/uploads", headers=AUTH, content=raster.read_bytes()).json()["upload_id"]
        as_classes = client.post("/v1/jobs/segment", headers=AUTH,
                                 json={"input": {"path": str(raster)}, "classes": f"@upload:{upload}"})
        assert as_classes.status_code == 400 and "not taught classes" in as_classes.json()["detail"]
        as_raster = client.post("/v1/jobs/segment", headers=AUTH,
                                json={"input": {"upload_id": sent.json()["upload_id"]}, "classes": "water"})
        assert as_raster.status_code == 400 and "not a raster" in as_raster.json()["detail"]
        assert client.delete(f"/v1/uploads/{sent.json()['upload_id']}", headers=AUTH).status_code == 204
        gone = client.post("/v1/jobs/segment", headers=AUTH, json={"input": {"path": str(raster)}, "classes": ref})
        assert gone.status_code == 404


def test_teach_segment_and_check_accuracy_through_the_api(site, tmp_path):
    from fastapi.testclient import TestClient

    from engine.geo.vectors import read_labels
    from tests.engine.api_helpers import AUTH, make_app, wait_for

    raster = tmp_path / "site.tif"
    raster.write_bytes(site["raster"].read_bytes())

    def polygons(path):
        geoms, values, _ = read_labels(str(path), "class")
        return [{"wkt": g.wkt, "label": v} for g, v in zip(geoms, values)]

    with TestClient(make_app(tmp_path)) as client:
        def run(kind: str, body: dict) -> dict:
            got = client.post(f"/v1/jobs/{kind}", headers=AUTH, json=body)
            assert got.status_code == 202, got.text
            status = wait_for(client, got.json()["id"])
            assert status["state"] == "done", status
            return status

        taught = run("teach", {"input": {"path": str(raster)}, "classes": CLASSES, "labels": polygons(site["labels"]),
                               "gsd": 0.5})
        assert taught["files"] == ["result.classes.json"] and set(taught["summary"]["taught"]) == set(LABELS)
        segmented = run("segment", {"input": {"path": str(raster)}, "classes": f"@job:{taught['id']}", "gsd": 0.5,
                                    "polygons": False})
        grid = run("grid", {"input": {"path": str(raster)}, "classes": f"@job:{taught['id']}", "cell_px": 64})
        assert [c["name"] for c in grid["summary"]["classes"]] == list(LABELS)
        shown = client.post("/v1/prompts", headers=AUTH, json={"classes": f"@job:{taught['id']}"})
        assert [c["name"] for c in shown.json()["classes"]] == list(LABELS), shown.text
        checked = run("accuracy", {"job": segmented["id"], "reference": polygons(site["reference"])})
        assert sorted(checked["files"]) == ["accuracy.json", "confusion.csv", "confusion.png"]
        assert checked["summary"]["miou"] >= 0.5 and str(tmp_path) not in json.dumps(checked["summary"])
        # what cannot run is refused at submit
        assert client.post("/v1/jobs/segment", headers=AUTH, json={"input": {"path": str(raster)},
                           "classes": f"@job:{segmented['id']}"}).status_code == 404  # not a teach job
        bad = client.post("/v1/jobs/teach", headers=AUTH, json={"input": {"path": str(raster)}, "classes": CLASSES,
                                                                "labels": [{"wkt": "POINT (1 2)", "label": "water"}]})
        assert bad.status_code == 400 and "Polygon" in bad.json()["detail"]


def _network_that_reads(site, names: tuple[str, ...], prototypes: dict[str, list[float]], path: Path) -> Path:
    """The site's tiny network with its text projection refitted (least squares over all template
    texts) so that `names` are embedded on their classes' visual prototypes and the other names stay
    where they were: a network that already reads some class names on this site."""
    import torch

    from engine.dense.prompts import templates
    from engine.models import load_model

    clip = make_clip(seed=1)
    tokens = load_model(str(site["checkpoint"]), arch=TINY, device="cpu").tokenize(
        [t.format(n) for n in LABELS for t in templates("imagenet80")])
    per_name = len(templates("imagenet80"))
    with torch.no_grad():
        projection = clip.text_projection.detach().clone()
        clip.text_projection = None
        pooled = clip.encode_text(tokens)  # the text tower's output before its projection
        clip.text_projection = torch.nn.Parameter(projection)
        wanted = pooled @ projection
        for i in range(len(wanted)):
            name = LABELS[i // per_name]
            if name in names:
                wanted[i] = torch.tensor(prototypes[name]) * wanted[i].norm()
        clip.text_projection.copy_(torch.linalg.lstsq(pooled, wanted).solution)
    torch.save({"state_dict": clip.state_dict()}, path)
    return path


def test_teaching_keeps_the_classes_a_network_already_reads(site, capsys, tmp_path):
    """A network whose text already gets water and grass right on this site (and not roof, road):
    labels of all four classes raise the held-out mIoU and lower no class the names got right."""
    first = tmp_path / "random.classes.json"
    assert main(["classes", "learn", str(site["raster"]), "--classes", CLASSES, "--labels", str(site["labels"]),
                 "-o", str(first), "--gsd", "0.5", *_model(site)]) == 0, capsys.readouterr().err
    reader = _network_that_reads(site, ("water", "grass"), json.loads(first.read_text())["prototypes"],
                                 tmp_path / "reader.pt")
    reading = {**site, "checkpoint": reader, "folder": tmp_path}
    text_only = _miou(reading, capsys, CLASSES, "text")
    right = [c for c, v in text_only["per_class"].items() if v["iou"] >= 0.5]
    assert set(right) >= {"water"} and text_only["per_class"]["roof"]["iou"] < 0.5, text_only["per_class"]
    taught = tmp_path / "reader.classes.json"
    assert main(["classes", "learn", str(site["raster"]), "--classes", CLASSES, "--labels", str(site["labels"]),
                 "-o", str(taught), "--gsd", "0.5", *_model(reading)]) == 0, capsys.readouterr().err
    with_labels = _miou(reading, capsys, f"@{taught}", "taught")
    for c in right:  # a pixel or two may change hands at class borders
        assert with_labels["per_class"][c]["iou"] >= text_only["per_class"][c]["iou"] - 0.01, (c, with_labels)
    assert with_labels["miou"] >= text_only["miou"] + 0.1, (text_only["miou"], with_labels["miou"])


def test_labels_leave_classes_alone_where_the_names_are_already_right(tiny_model):
    """Pixels whose features already sit on their class's text embedding (what a model that reads the
    names gives): every α scores the held-out labels perfectly, the tie goes to α = 0, and the rows
    segmentation scores against are the text embeddings themselves — teaching cannot lower them."""
    import torch

    from engine.dense import PromptSet
    from engine.dense.taught import TaughtClasses
    from engine.dense.text import embed_prompts

    prompts = PromptSet.parse(CLASSES)
    text = embed_prompts(tiny_model, prompts, "imagenet80").float()
    rng = np.random.default_rng(0)
    features = {c: [(text[c].numpy() + rng.normal(0, 0.01, (200, text.shape[1]))).astype(np.float32)
                    for _ in range(3)] for c in range(len(LABELS))}
    taught = TaughtClasses.learn(tiny_model, prompts, features, "imagenet80")
    assert taught.made["held_out_miou_by_alpha"]["0"] == 1.0 and taught.alpha == 0.0
    assert torch.allclose(taught.rows(tiny_model, prompts, "imagenet80").float(), text, atol=1e-6)


def test_a_label_on_no_data_teaches_nothing_and_is_counted(site, tmp_path, capsys):
    """A polygon over no data is not taught from the data beside it (it used to take the nearest patches
    holding data, of other classes), and the run says so."""
    with rasterio.open(site["raster"]) as ds:
        data, profile = ds.read(), ds.profile
        transform, crs = ds.transform, ds.crs
    data[data == 0] = 1
    data[:, :, :200] = 0  # the western 200 columns: no data
    profile.update(nodata=0)
    raster = tmp_path / "half.tif"
    with rasterio.open(raster, "w", **profile) as ds:
        ds.write(data)
    west = shapely.box(*(transform @ (20, 300)), *(transform @ (150, 40)))  # on no data
    east = [shapely.box(*(transform @ (260 + 40 * i, 300)), *(transform @ (280 + 40 * i, 40))) for i in range(3)]
    labels = tmp_path / "labels.gpkg"
    write_features(labels, [west, *east], {"class": np.array(["water", "grass", "roof", "grass"], dtype=object)},
                   crs, "labels")
    out = tmp_path / "site.classes.json"
    assert main(["classes", "learn", str(raster), "--classes", CLASSES, "--labels", str(labels), "-o", str(out),
                 "--gsd", "0.5", *_model(site)]) == 0, capsys.readouterr().err
    made = json.loads(out.read_text())["made"]
    assert made["skipped_labels"].get("water (on no data)") == 1
    assert "water" not in made["polygons"]  # nothing taught from the grass and road beside it


def test_accuracy_counts_only_polygons_as_reference_areas(site, tmp_path, capsys):
    """Points and lines mark no area: they are skipped, as teaching and the API's check skip them (a file of
    points used to score 'mIoU 1.000 (5 labelled pixels)')."""
    assert main(["segment", str(site["raster"]), "--classes", CLASSES, "-o", str(tmp_path / "seg"), "--gsd", "0.5",
                 "--no-polygons", *_model(site)]) == 0
    with rasterio.open(site["raster"]) as ds:
        transform, crs = ds.transform, ds.crs
    points = tmp_path / "points.gpkg"
    write_features(points, [shapely.Point(*(transform @ (10 + 20 * i, 10))) for i in range(5)],
                   {"class": np.array(["water"] * 5, dtype=object)}, crs, "points")
    assert main(["accuracy", str(tmp_path / "seg" / "site_classes.tif"), "--reference", str(points), "-o",
                 str(tmp_path / "acc"), "-q"]) == 2
    assert "no reference polygon" in capsys.readouterr().err


def test_the_teach_api_refuses_taught_classes_as_the_classes_to_teach(client, root):
    from tests.engine.api_helpers import AUTH

    src = write_raster(root / "r.tif", scene(64, 64)[0])
    with rasterio.open(src) as ds:
        left, top = ds.bounds.left, ds.bounds.top
    body = {"input": {"path": str(src)}, "classes": "@job:" + "0" * 32,
            "labels": [{"wkt": shapely.box(left, top - 10, left + 10, top).wkt, "label": "water"}]}
    got = client.post("/v1/jobs/teach", headers=AUTH, json=body)
    assert got.status_code == 400 and "not taught classes" in got.json()["detail"], got.text
    # curves (GML parcels): a 400 naming them, not a 500 from the WKT reader
    arc = (f"CURVEPOLYGON(CIRCULARSTRING({left} {top - 5},{left + 5} {top},{left + 10} {top - 5},{left + 5} {top - 10},"
           f"{left} {top - 5}))")
    for wkt in (arc, f"MULTISURFACE({arc})"):
        got = client.post("/v1/jobs/teach", headers=AUTH, json={**body, "classes": "water; grass",
                                                                "labels": [{"wkt": wkt, "label": "water"}]})
        assert got.status_code == 400 and "has curves" in got.json()["detail"], got.text
        got = client.post("/v1/jobs/grid", headers=AUTH, json={"input": {"path": str(src)}, "classes": "a; b",
                                                               "cell_m": 10, "mask_wkt": wkt})
        assert got.status_code == 400 and "the mask has curves" in got.json()["detail"], got.text


def test_labels_are_read_from_the_layer_that_has_the_class_field(site, tmp_path):
    """A GeoPackage of several layers (points first, the labels second): the layer with the field is read,
    without a library warning; a field no layer has names the layers."""
    import warnings

    with rasterio.open(site["raster"]) as ds:
        transform, crs = ds.transform, ds.crs
    path = tmp_path / "project.gpkg"
    write_features(path, [shapely.Point(*(transform @ (5, 5))).buffer(1)], {"foo": np.array(["x"], dtype=object)},
                   crs, "aaa")
    polygon = shapely.box(*(transform @ (10, 40)), *(transform @ (40, 10)))
    write_features(path, [polygon], {"class": np.array(["water"], dtype=object)}, crs, "labels", append=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        geoms, values, _ = read_labels(str(path), "class")
    assert values == ["water"] and geoms[0].equals(shapely.MultiPolygon([polygon]))
    with pytest.raises(Exception, match=r"none of its layers \(aaa, labels\) has it"):
        read_labels(str(path), "label")


def test_a_run_under_other_settings_than_the_teaching_says_so(site, tmp_path, capsys):
    """Prototypes are features at the taught scale and setting: a run at another GSD or global bias is
    told (the summary's notes, printed by the CLI), not left to find out from worse classes."""
    taught = tmp_path / "site.classes.json"
    assert main(["classes", "learn", str(site["raster"]), "--classes", CLASSES, "--labels", str(site["labels"]),
                 "-o", str(taught), "--gsd", "0.5", "--preset", "enhanced", *_model(site)]) == 0
    capsys.readouterr()
    assert main(["segment", str(site["raster"]), "--classes", f"@{taught}", "-o", str(tmp_path / "same"),
                 "--gsd", "0.5", "--preset", "enhanced", "--no-polygons", *_model(site)]) == 0
    assert json.loads((tmp_path / "same" / "site_summary.json").read_text())["notes"] == []
    assert main(["segment", str(site["raster"]), "--classes", f"@{taught}", "-o", str(tmp_path / "other"),
                 "--gsd", "1.0", "--no-polygons", *_model(site)]) == 0
    notes = json.loads((tmp_path / "other" / "site_summary.json").read_text())["notes"]
    assert any("made at 0.5 m per pixel and this run works at 1 m" in n for n in notes), notes
    assert any("global bias 0.3 and this run uses 0" in n for n in notes), notes
    assert "made at 0.5 m per pixel" in capsys.readouterr().err
    # bands: the file says which it was taught from; reading others of a raster like it is said too
    assert json.loads(taught.read_text())["made"]["bands"] == [1, 2, 3]
    assert main(["segment", str(site["raster"]), "--classes", f"@{taught}", "-o", str(tmp_path / "bands"),
                 "--gsd", "0.5", "--preset", "enhanced", "--bands", "3,2,1", "--no-polygons", *_model(site)]) == 0
    notes = json.loads((tmp_path / "bands" / "site_summary.json").read_text())["notes"]
    assert notes == ["the taught classes were made from bands 1,2,3 as red, green, blue and this run reads bands "
                     "3,2,1: pass --bands 1,2,3 if this raster's bands are in the same order"], notes
    capsys.readouterr()
    assert main(["classify", str(site["raster"]), "--classes", f"@{taught}", "--cell", "40", "--bands", "3,2,1",
                 "-o", str(tmp_path / "grid"), *_model(site)]) == 0  # a grid says it too (printed)
    assert json.loads((tmp_path / "grid" / "site_grid_summary.json").read_text())["notes"] == notes
    assert "farslip: note: the taught classes were made from bands 1,2,3" in capsys.readouterr().err


def test_small_and_thin_labels_on_data_are_taught_from_the_patch_covering_them(site, tmp_path, capsys):
    """A speck at a patch corner and a strip narrower than a patch hold no patch centre: each takes the
    patch covering it (not skipped as on no data)."""
    with rasterio.open(site["raster"]) as ds:
        transform, crs = ds.transform, ds.crs
    speck = shapely.box(*(transform @ (47.9, 48.1)), *(transform @ (48.1, 47.9)))  # at a corner of 16 px patches
    strip = shapely.box(*(transform @ (20, 52.5)), *(transform @ (120, 50.5)))  # 2 px tall, between centre rows
    labels = tmp_path / "labels.gpkg"
    write_features(labels, [speck, strip], {"class": np.array(["water", "grass"], dtype=object)}, crs, "labels")
    out = tmp_path / "site.classes.json"
    main(["classes", "learn", str(site["raster"]), "--classes", CLASSES, "--labels", str(labels), "-o", str(out),
          "--gsd", "0.5", *_model(site)])
    err = capsys.readouterr().err
    assert "on no data" not in err, err


def test_accuracy_of_class_maps_without_geotransform(tmp_path, capsys):
    """A class map of a plain tile (no geotransform) is in the frame `segment` gives its polygons and QGIS
    draws it in (x = column, y = −row); one placed by ground control points also takes references in a
    CRS, brought in through its GCPs. (Both used to find no reference polygon overlapping.)"""
    from rasterio.control import GroundControlPoint

    classes = [{"index": i, "name": n, "synonyms": [n]} for i, n in enumerate(["water", "grass"])]
    data = np.repeat(np.array([[0] * 40 + [1] * 40], dtype=np.uint8), 60, axis=0)  # 60 rows × 80 cols

    def class_map(path, gcps=None):
        with rasterio.open(path, "w", driver="GTiff", width=80, height=60, count=1, dtype="uint8", nodata=255) as ds:
            ds.write(data, 1)
            if gcps is not None:
                ds.gcps = gcps
            ds.update_tags(FARSLIP_CLASSES=json.dumps(classes))
        return path

    utm = rasterio.crs.CRS.from_epsg(32633)
    gcps = [GroundControlPoint(row, col, 500000.0 + col * 0.5, 5200000.0 - row * 0.5)
            for row, col in ((0, 0), (0, 80), (60, 0), (60, 80))]
    plain = class_map(tmp_path / "tile_classes.tif")
    placed = class_map(tmp_path / "gcps_classes.tif", (gcps, utm))
    frame = tmp_path / "frame.gpkg"  # the left half, drawn over the tile in QGIS: x = column, y = −row
    write_features(frame, [shapely.box(2, -58, 38, -2)], {"class": np.array(["water"], dtype=object)}, None, "ref")
    ground = tmp_path / "ground.gpkg"  # the right half, in the GCPs' CRS
    write_features(ground, [shapely.box(500021.0, 5199971.0, 500039.0, 5199999.0)],
                   {"class": np.array(["grass"], dtype=object)}, utm, "ref")
    for raster, reference, name, pixels in ((plain, frame, "water", 36 * 56), (placed, frame, "water", 36 * 56),
                                            (placed, ground, "grass", 36 * 56)):
        out = tmp_path / f"acc_{raster.stem}_{reference.stem}"
        assert main(["accuracy", str(raster), "--reference", str(reference), "-o", str(out), "-q"]) == 0, \
            capsys.readouterr().err
        report = json.loads((out / "accuracy.json").read_text())
        assert report["overall_accuracy"] == 1.0 and report["labelled_pixels"] == pixels, (raster, reference, report)
        assert capsys.readouterr().err == ""  # no library warning either
