"""Stage 1's shards on real tar files the tests write: RS5M's own layout (img_content, img_name,
caption), jpg/png + txt/json, unknown layouts (one line naming the keys), `farslip data shards` from an
image folder + CSV/JSON captions, counting through sizes.json, and the seeded, resumable stream."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch
import pytest
from PIL import Image

from engine.errors import InputError
from training.data.shards import count_samples, decode_sample, read_captions, tar_samples, write_shards
from training.data.stream import ShardStream, buffered_shuffle

REPO = Path(__file__).resolve().parents[2]


def _image_bytes(seed: int, fmt: str = "JPEG", size: int = 64) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt)
    return buffer.getvalue()


def write_tar(path: Path, samples: list[dict[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for n, sample in enumerate(samples):
            for ext, payload in sample.items():
                info = tarfile.TarInfo(f"{n:06d}.{ext}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return path


def rs5m_shard(path: Path, count: int, start: int = 0) -> Path:
    """RS5M's layout: the image's encoded bytes under img_content, its file name and caption as text."""
    return write_tar(path, [{"img_content": _image_bytes(start + n), "img_name": f"pub11_{start + n}.jpg".encode(),
                             "caption": f"a satellite image number {start + n}".encode()} for n in range(count)])


def test_rs5m_layout_decodes(tmp_path):
    samples = list(tar_samples(str(rs5m_shard(tmp_path / "rs5m.tar", 3))))
    assert [s["__key__"] for s in samples] == ["000000", "000001", "000002"]
    image, caption = decode_sample(samples[1])
    assert image.size == (64, 64) and image.mode == "RGB" and caption == "a satellite image number 1"


def test_common_layouts_decode(tmp_path):
    shard = write_tar(tmp_path / "c.tar", [
        {"jpg": _image_bytes(0), "txt": b"a field"},
        {"png": _image_bytes(1, "PNG"), "json": json.dumps({"caption": "a lake", "id": 3}).encode()},
        {"webp": _image_bytes(2, "WEBP"), "json": json.dumps({"title": "a road"}).encode()}])
    assert [decode_sample(s)[1] for s in tar_samples(str(shard))] == ["a field", "a lake", "a road"]


def test_an_unknown_layout_is_one_line_listing_its_keys(tmp_path):
    shard = write_tar(tmp_path / "u.tar", [{"image_bytes": _image_bytes(0), "label": b"3"}])
    with pytest.raises(InputError) as err:
        decode_sample(next(tar_samples(str(shard))))
    message = str(err.value)
    assert "\n" not in message and "image_bytes, label" in message and "img_content + caption" in message


def test_counting_reads_sizes_json_else_the_tars(tmp_path):
    urls = [str(rs5m_shard(tmp_path / f"{i}.tar", 3 + i)) for i in range(2)]
    assert count_samples(urls) == 7
    (tmp_path / "sizes.json").write_text(json.dumps({"0.tar": 100, "1.tar": 200}))
    assert count_samples(urls) == 300  # trusted without opening a tar
    (tmp_path / "sizes.json").write_text(json.dumps({"0.tar": 100}))  # incomplete: scanned again
    assert count_samples(urls) == 7


@pytest.mark.parametrize("kind", ["csv", "json-records", "json-mapping"])
def test_farslip_data_shards_from_a_folder_and_captions(kind, tmp_path):
    images = tmp_path / "imgs"
    (images / "sub").mkdir(parents=True)
    names = [f"sub/a{i}.jpg" if i % 2 else f"b{i}.png" for i in range(5)]
    for i, name in enumerate(names):
        (images / name).write_bytes(_image_bytes(i, "PNG" if name.endswith("png") else "JPEG"))
    pairs = [(n, f"caption, number {i}") for i, n in enumerate(names)] + [("missing.jpg", "gone")]
    if kind == "csv":
        captions = tmp_path / "c.csv"
        captions.write_text("filepath,title\n" + "".join(f'{n},"{c}"\n' for n, c in pairs))
    elif kind == "json-records":
        captions = tmp_path / "c.json"
        captions.write_text(json.dumps([{"image": n, "caption": c} for n, c in pairs]))
    else:
        captions = tmp_path / "c.json"
        captions.write_text(json.dumps(dict(pairs)))
    assert read_captions(captions)[0] == (names[0], "caption, number 0")
    out = tmp_path / "shards"
    result = subprocess.run([sys.executable, "-m", "engine.cli", "data", "shards", "--images", str(images),
                             "--captions", str(captions), "-o", str(out), "--per-shard", "2"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert "--samples 5" in result.stdout and "1 skipped" in result.stdout
    assert sorted(p.name for p in out.glob("*.tar")) == ["00000.tar", "00001.tar", "00002.tar"]
    assert json.loads((out / "sizes.json").read_text()) == {"00000.tar": 2, "00001.tar": 2, "00002.tar": 1}
    decoded = [decode_sample(s) for i in range(3) for s in tar_samples(str(out / f"{i:05d}.tar"))]
    assert [c for _, c in decoded] == [c for _, c in pairs[:5]]
    assert all(im.size == (64, 64) for im, _ in decoded)


def test_write_shards_errors_are_one_line(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "c.csv").write_text("name,words\nx.jpg,a\n")
    with pytest.raises(InputError, match="no image column"):
        write_shards(tmp_path / "imgs", tmp_path / "c.csv", tmp_path / "o")
    (tmp_path / "d.csv").write_text("filepath,caption\nx.jpg,a\n")
    with pytest.raises(InputError, match="no image of"):
        write_shards(tmp_path / "imgs", tmp_path / "d.csv", tmp_path / "o")


def test_buffered_shuffle_is_a_seeded_permutation():
    import random

    out = list(buffered_shuffle(iter(range(50)), 10, random.Random(1), initial=4))
    assert sorted(out) == list(range(50)) and out != list(range(50))
    assert out == list(buffered_shuffle(iter(range(50)), 10, random.Random(1), initial=4))
    assert list(buffered_shuffle(iter(range(5)), 0, random.Random(1))) == list(range(5))


def _keys(stream: ShardStream, worker: int = 0, workers: int = 1, n: int = 12) -> list[str]:
    import itertools

    return [f"{s['__url__'][-5]}/{s['__key__']}" for s in itertools.islice(stream.samples(worker, workers), n)]


def test_stream_shuffles_shards_the_same_on_every_rank_and_splits_them(tmp_path):
    urls = [str(rs5m_shard(tmp_path / f"{i}.tar", 4, start=10 * i)) for i in range(4)]

    def stream(rank, epoch=0, seed=0):
        return ShardStream(urls, lambda x: x, rank=rank, world=2, seed=seed, epoch=epoch, buffer=0,
                           shard_shuffle=True, batch_size=2)

    a, b = stream(0), stream(1)
    assert set(a.shards(0, 1)).isdisjoint(b.shards(0, 1)) and len(a.shards(0, 1) + b.shards(0, 1)) == 4
    assert a.shards(0, 1) == stream(0).shards(0, 1)  # seeded
    orders = {tuple(stream(0, epoch=e).shards(0, 1) + stream(1, epoch=e).shards(0, 1)) for e in range(6)}
    assert len(orders) > 1  # a new shard order each epoch
    assert a.shards(0, 2) + a.shards(1, 2) == a.shards(0, 1)[0::2] + a.shards(0, 1)[1::2]  # workers split a rank's


def test_a_resumed_stream_continues_with_the_next_unseen_sample(tmp_path):
    """After k batches the DataLoader (2 workers, round-robin) resumes with batch k's samples."""
    import torch

    urls = [str(rs5m_shard(tmp_path / f"{i}.tar", 14, start=100 * i)) for i in range(2)]

    def caption_batches(skip):
        stream = ShardStream(urls, lambda pair: pair[1], rank=0, world=1, seed=3, epoch=0, buffer=5,
                             shard_shuffle=True, batch_size=2, skip_batches=skip)
        loader = torch.utils.data.DataLoader(stream, batch_size=2, num_workers=2, drop_last=True,
                                             collate_fn=list)
        return list(__import__("itertools").islice(iter(loader), 6 - skip))

    straight = caption_batches(0)
    assert len({c for b in straight for c in b}) == 12  # no repeats within the epoch
    assert caption_batches(3) == straight[3:]
    assert caption_batches(4) == straight[4:]


def test_each_pass_holds_every_sample_once_even_with_a_buffer_larger_than_the_data(tmp_path):
    urls = [str(rs5m_shard(tmp_path / f"{i}.tar", 4, start=10 * i)) for i in range(2)]
    stream = ShardStream(urls, lambda x: x, rank=0, world=1, seed=0, epoch=0, buffer=5000, shard_shuffle=True,
                         batch_size=2)
    keys = _keys(stream, n=16)
    assert len(set(keys[:8])) == 8 and sorted(keys[:8]) == sorted(keys[8:])  # pass 1, then pass 2 reshuffled
    assert keys[:8] != keys[8:]


def test_a_resumed_stage_1_run_reads_on_from_where_it_stopped(scene_dataset, tmp_path):
    from tests.engine.conftest import TINY
    from training.config import build_config
    from training.distributed import World
    from training.loop import Run

    cfg = build_config(1, overrides=dict(data=str(scene_dataset["shards"] / "{0000..0001}.tar"), model=f"random:{TINY}",
                                         out=str(tmp_path / "o"), batch_size=2, workers=2, tensorboard=False))
    run = Run(cfg, World())
    straight = list(run.data.batches(0, 0))
    assert len(straight) == 8  # 16 samples / batch 2
    resumed = list(run.data.batches(0, 5))
    assert len(resumed) == 3
    for a, b in zip(resumed, straight[5:]):  # the same samples, with the same random local crops
        for key in ("tokens", "images", "boxes", "crops"):
            assert torch.equal(a[key], b[key]), key
    again = list(run.data.batches(0, 0))
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(again, straight))
