"""Samples that were trained on or scored wrongly without a word: a shard naming a sample twice (an image
paired with another's caption), an empty caption, a record whose W/H exceed its image (black crops),
images deeper than 8 bits (white, or wrapped), a decompression bomb (a traceback), hidden and empty class
folders (extra classes), labels of another size than their image (a score of stretched logits)."""

from __future__ import annotations

import io
import json
import re
import tarfile

import numpy as np
import pytest
from PIL import Image

from engine.errors import InputError
from training.data.readers import MGRSDataset
from training.data.shards import decode_sample, tar_samples
from training.evaluate.ovss_datasets import OVSSDataset, read_image, samples
from training.evaluate.zero_shot import read_image_folder


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _tar(path, members: list[tuple[str, bytes]]):
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_a_shard_naming_a_sample_twice_is_refused_not_paired_with_another_caption(tmp_path):
    a, b = (_png_bytes(np.full((8, 8, 3), v, dtype=np.uint8)) for v in (10, 200))
    shard = _tar(tmp_path / "0000.tar", [("dup.png", a), ("dup.txt", b"caption of image A"), ("dup.png", b),
                                         ("ok.png", a), ("ok.txt", b"fine")])
    with pytest.raises(InputError, match="holds dup.png twice in sample 'dup'"):
        list(tar_samples(shard))


def test_an_empty_caption_is_refused_naming_the_sample(tmp_path):
    shard = _tar(tmp_path / "0000.tar", [("s1.png", _png_bytes(np.zeros((8, 8, 3), dtype=np.uint8))),
                                         ("s1.txt", b"  \n")])
    (sample,) = tar_samples(shard)
    with pytest.raises(InputError, match="sample 's1' has an empty caption"):
        decode_sample(sample)


def test_a_12_bit_image_keeps_its_picture_in_training_and_evaluation(tmp_path):
    ramp = np.tile(np.linspace(700, 3900, 64), (64, 1)).astype(np.uint16)  # a 12-bit sensor's values
    shard = _tar(tmp_path / "0000.tar", [("s1.png", _png_bytes(ramp)), ("s1.txt", b"a ramp")])
    (sample,) = tar_samples(shard)
    image, caption = decode_sample(sample)
    row = np.asarray(image)[32, :, 0].astype(int)
    assert caption == "a ramp" and row[0] == 0 and row[-1] == 255 and (np.diff(row) >= 0).all()
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    import rasterio

    with rasterio.open(tmp_path / "ramp.tif", "w", driver="GTiff", width=64, height=64, count=3,
                       dtype="uint16") as ds:
        ds.write(np.stack([ramp] * 3))
    for path in (tmp_path / "ramp.png", tmp_path / "ramp.tif"):  # was all 255, and wrapped modulo 256
        row = read_image(path)[32, :, 0].astype(int)
        assert row[0] == 0 and row[-1] == 255 and (np.diff(row) >= 0).all(), path


def _record_dataset(tmp_path, image: np.ndarray, boxes: list[dict], **kw) -> MGRSDataset:
    (tmp_path / "images").mkdir(exist_ok=True)
    Image.fromarray(image).save(tmp_path / "images" / "a.png")
    segments = [{"bbox": b, "category": "car", "category_id": 0} for b in boxes]
    (tmp_path / "text_info.json").write_text(json.dumps(
        [{"global_filepath": "images/a.png", "global_caption": "a scene", "segment": segments}]))
    return MGRSDataset(tmp_path / "text_info.json", min_size=8, max_boxes=8, **kw)


def test_a_record_whose_size_exceeds_its_image_crops_no_black(tmp_path):
    pixels = np.random.default_rng(0).integers(1, 255, (96, 96, 3), dtype=np.uint8)  # no black pixel
    off = {"x1": 200, "y1": 200, "x2": 260, "y2": 260, "W": 1000, "H": 1000}  # wholly off the 96 px image
    over = {"x1": 60, "y1": 60, "x2": 140, "y2": 140, "W": 1000, "H": 1000}   # partly
    sample = _record_dataset(tmp_path, pixels, [off, over])[0]
    assert sample["boxes"].tolist() == [[60.0, 60.0, 96.0, 96.0]]
    (crop,) = sample["crops"]
    assert np.array_equal(np.asarray(crop), pixels[60:96, 60:96])


def test_a_decompression_bomb_is_one_line_naming_the_record(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 96 × 96 image counts as a bomb (9,216 px)
    with pytest.raises(InputError, match="record 0: cannot read image .*a.png: Image size"):
        dataset = _record_dataset(tmp_path, np.zeros((96, 96, 3), dtype=np.uint8), [])
        dataset[0]


def test_hidden_and_empty_class_folders_are_no_classes(tmp_path):
    for name in ("forest", "river", ".ipynb_checkpoints"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / name / "1.png")
    rows, classes = read_image_folder(tmp_path)
    assert classes == ["forest", "river"] and len(rows) == 2
    (tmp_path / "lake").mkdir()
    with pytest.raises(InputError, match="class sub-folder\\(s\\) lake hold no images"):
        read_image_folder(tmp_path)


def test_a_label_of_another_size_than_its_image_is_refused(tmp_path):
    dataset = OVSSDataset("toy", image_dir="img", label_dir="ann", image_suffix=".png", label_suffix=".png",
                          classes=("a", "b"), reduce_zero_label=False, threshold=0.0, background=-1)
    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    Image.fromarray(np.zeros((96, 96, 3), dtype=np.uint8)).save(tmp_path / "img" / "1.png")
    Image.fromarray(np.zeros((40, 300), dtype=np.uint8)).save(tmp_path / "ann" / "1.png")
    with pytest.raises(InputError, match="1.png is 300×40 px but its image 1.png is 96×96"):
        list(samples(dataset, tmp_path))


def test_a_caption_cut_at_an_unquoted_comma_is_refused_naming_the_line(tmp_path):
    from training.data.shards import read_captions

    (tmp_path / "c.csv").write_text('filepath,caption\ng0.png,"quoted, fine"\ng1.png,red roofs, grey road\n')
    with pytest.raises(InputError, match="c.csv line 3: more fields than the header"):
        read_captions(tmp_path / "c.csv")


@pytest.mark.parametrize("text, message", [
    ('filepath,caption\ng0.png,"red roofs, grey road\ng1.png,green\ng2.png,blue\n',
     "c.csv line 2: a double quote opened on this line is never closed"),
    ('filepath,caption\ng0.png,"a\nlong caption"\ng1.png,"say ""hi"" x\n',
     "c.csv line 4: a double quote opened on this line is never closed"),
    ('filepath,caption\ng0.png,"x"y\n', "c.csv line 2: ',' expected after '\"'"),
])
def test_a_double_quote_never_closed_is_refused_naming_its_line(tmp_path, text, message):
    """The csv module read every line after it into one caption: a few rows trained where thousands were
    meant, with no word. Captions for shards and the CSVs evaluation reads are read the same way."""
    from training.data.shards import read_captions
    from training.evaluate.zero_shot import read_csv

    (tmp_path / "c.csv").write_text(text)
    for read in (read_captions, read_csv):
        with pytest.raises(InputError, match=re.escape(message)):
            read(tmp_path / "c.csv")
    (tmp_path / "c.csv").write_text('filepath,caption\ng0.png,"a\nlong, ""quoted"" caption"\ng1.png,plain\n')
    assert read_captions(tmp_path / "c.csv") == [("g0.png", 'a\nlong, "quoted" caption'), ("g1.png", "plain")]
