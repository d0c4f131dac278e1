"""Synthetic scenes written as MGRS / shards / GeoTIFFs, read back by the training readers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch

from training.data.readers import MGRSDataset, expand_shards, local_crop_boxes
from training.data.shards import count_samples, decode_sample, tar_samples
from training.data.synthetic import SCENE_CLASSES, random_scene, write_scene_dataset


def test_random_scenes_have_exact_masks_and_boxes_on_their_objects():
    rgb, mask, objects = random_scene(256, seed=3)
    assert rgb.shape == (256, 256, 3) and mask.shape == (256, 256)
    assert objects and {o["category"] for o in objects} <= set(SCENE_CLASSES)
    for o in objects:
        b = o["bbox"]
        inside = mask[b["y1"]:b["y2"], b["x1"]:b["x2"]]
        share = (inside == SCENE_CLASSES.index(o["category"])).mean()
        assert share > 0.7, (o, share)  # boxes hug their objects (trees are discs)
    again = random_scene(256, seed=3)
    assert np.array_equal(again[0], rgb) and again[2] == objects  # deterministic with a seed


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return write_scene_dataset(tmp_path_factory.mktemp("synthetic"), count=12, size=192, seed=1)


def test_mgrs_reader_round_trip(written):
    dataset = MGRSDataset(written["mgrs"], max_boxes=4, min_size=8, max_size=1024)
    assert len(dataset) == 12
    sample = dataset[0]
    assert sample["image"].size == (192, 192) and sample["caption"].startswith("A satellite image")
    k = len(sample["categories"])
    assert 1 <= k <= 4 and sample["boxes"].shape == (k, 4) and len(sample["crops"]) == k
    assert sample["texts"][0] == f"a satellite image of {sample['categories'][0]}"
    for crop, box in zip(sample["crops"], sample["boxes"]):
        assert crop.size == (round(float(box[2])) - round(float(box[0])), round(float(box[3])) - round(float(box[1])))
    small = MGRSDataset(written["mgrs"], min_size=64)  # published: objects under 64² px are dropped
    assert all((o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]) >= 64 ** 2
               for i in range(len(small)) for o in small.objects(i, (192, 192)))
    orders = set()
    for epoch in range(5):
        dataset.set_epoch(epoch)
        orders.add(tuple(map(tuple, dataset[1]["boxes"].tolist())))
    records = json.loads(written["mgrs"].read_text())
    if len(records[1]["segment"]) > 1:
        assert len(orders) > 1  # the objects come in a new random order each epoch


def test_shards_expand_count_and_decode(written):
    spec = str(written["shards"] / "{0000..0001}.tar")
    urls = expand_shards(spec)
    assert [u.rsplit("/", 1)[1] for u in urls] == ["0000.tar", "0001.tar"]
    assert count_samples(urls) == 12
    pairs = [decode_sample(s) for u in urls for s in tar_samples(u)]
    assert len(pairs) == 12 and pairs[0][0].size == (192, 192) and isinstance(pairs[0][1], str)


def test_labelled_geotiffs(written):
    with rasterio.open(written["geotiff"] / "scene00000.tif") as img, \
            rasterio.open(written["geotiff"] / "scene00000_label.tif") as lab:
        assert img.crs == lab.crs and img.transform == lab.transform
        assert json.loads(lab.tags()["CLASSES"]) == list(SCENE_CLASSES)
        assert lab.read(1).max() < len(SCENE_CLASSES)


def test_local_crop_boxes_follow_the_random_resized_crop_rule():
    g = torch.Generator().manual_seed(0)
    boxes = local_crop_boxes(400, 300, count=64, generator=g)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (400 * 300)
    assert boxes.shape == (64, 4) and (boxes[:, 2] <= 400).all() and (boxes[:, 3] <= 300).all()
    assert areas.min() >= 0.29 and areas.max() <= 0.71
    again = local_crop_boxes(400, 300, count=64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(boxes, again)


def test_template_captions_count_place_and_name_the_dominant_cover():
    from PIL import Image

    from training.data.captions import TemplateCaptioner

    green = Image.new("RGB", (300, 300), (80, 150, 60))
    objects = [{"bbox": {"x1": 10, "y1": 10, "x2": 40, "y2": 40}, "category": "car"},
               {"bbox": {"x1": 250, "y1": 250, "x2": 290, "y2": 290}, "category": "car"},
               {"bbox": {"x1": 120, "y1": 120, "x2": 180, "y2": 180}, "category": "building"}]
    caption = TemplateCaptioner()(green, objects)
    assert caption["brief_caption"] == "a satellite image with two cars and one building"
    assert "The cars are in the top left, bottom right of the image." in caption["detailed_caption"]
    assert "The building is in the centre of the image." in caption["detailed_caption"]
    assert caption["detailed_caption"].endswith("Most of the image is green vegetation.")
    mixed = Image.new("RGB", (100, 100), (200, 100, 150))
    assert "Most of" not in TemplateCaptioner()(mixed, objects)["detailed_caption"]
