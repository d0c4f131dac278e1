"""The evaluation follows the published code step by step. Each reference here is written from the
published formula or code (mmcv/cv2 resize, torchvision's Resize + CenterCrop, FarSLIP's
tests/test_retrieval.py, SegEarth-OV's `custom_attn` + `output_cls_token`, RS-OVSS's `forward_slide` +
`compute_padsize`), not from our own output."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from engine.boxes import Box
from engine.dense import InferenceOptions, Segmenter, prepare_image
from engine.dense.forward import dense_features
from engine.dense.sliding import CropGrid, RowStrips, crop_strips, mean_strips, sliding_logits
from training.data.synthetic import scene
from training.evaluate.ovss import predict, rescaled_size, resize_long_side
from training.evaluate.zero_shot import (PUBLISHED_CAPTION_PREFIX, clip_view, evaluate_retrieval,
                                         published_caption_prefix)

CROP, STRIDE, PATCH = 224, 112, 16


# ---- 1. OVSS image resize: mmcv Resize(scale=(448, 448), keep_ratio=True) → cv2.resize INTER_LINEAR

def _mmcv_size(h: int, w: int, scale=(448, 448)) -> tuple[int, int]:
    """mmcv.rescale_size + _scale_size: factor min(long/max(h, w), short/min(h, w)), int(x·f + 0.5)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def _linear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cv2 INTER_LINEAR along one axis: source coordinate (d + 0.5)·in/out − 0.5, floored; weights of
    the two neighbours; clamped at the borders (a source left of 0 or at/after the last pixel reads it alone)."""
    scale = n_in / n_out
    f = (np.arange(n_out) + 0.5) * scale - 0.5
    s = np.floor(f).astype(int)
    frac = f - s
    frac[s < 0], s[s < 0] = 0.0, 0
    last = s >= n_in - 1
    frac[last], s[last] = 0.0, n_in - 1
    return s, np.minimum(s + 1, n_in - 1), frac


def _cv2_linear(image: np.ndarray, h: int, w: int) -> np.ndarray:
    y0, y1, fy = _linear_axis(image.shape[0], h)
    x0, x1, fx = _linear_axis(image.shape[1], w)
    im = image.astype(np.float64)
    rows = im[y0] * (1 - fy)[:, None, None] + im[y1] * fy[:, None, None]
    out = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("shape", [(512, 512), (1024, 1024), (1080, 1280), (1016, 1024), (600, 1000), (300, 200),
                                   (100, 448), (37, 1000)])
def test_ovss_resize_is_mmcv_rescale_with_cv2_linear(shape):
    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    image[: shape[0] // 2] = image[: shape[0] // 2] // 8 * 8  # some flat-ish parts too
    want_size = _mmcv_size(*shape)
    assert rescaled_size(*shape) == want_size
    got = resize_long_side(image)
    assert got.shape == (*want_size, 3) and got.dtype == np.uint8
    want = _cv2_linear(image, *want_size)
    diff = np.abs(got.astype(int) - want.astype(int))
    # the reference is the formula in exact (float64) arithmetic; ours runs in float32, so a value within
    # ~0.03 of a half may round the other way (cv2 itself, in 11-bit fixed point, differs by one level
    # on ~13 % of pixels)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99


def test_ovss_resize_has_no_antialiasing():
    """A 1-px stripe pattern shrunk 4×: bilinear without antialiasing samples two of every four columns
    (cv2's behaviour), an antialiased resize would average the stripes to grey."""
    image = np.zeros((1792, 1792, 3), np.uint8)
    image[:, 1::4] = 255  # columns 1, 5, 9, ...: the sample at 4d + 1.5 reads columns 4d+1 and 4d+2 halfway
    got = resize_long_side(image)
    assert got.shape == (448, 448, 3)
    assert np.all(got == _cv2_linear(image, 448, 448)) and np.all(np.abs(got.astype(int) - 128) <= 1)


# ---- 4. classification view: open_clip image_transform(is_train=False) = torchvision Resize + CenterCrop

def _published_view(path, size: int = 224) -> np.ndarray:
    """torchvision Resize(size) on a PIL image: shorter side → size, longer → int(size · long / short)
    (left as is when already that size), PIL bicubic; CenterCrop: offsets int(round((side − size) / 2));
    then RGB and ToTensor's / 255."""
    with Image.open(path) as im:
        w, h = im.size
        short, long = min(w, h), max(w, h)
        new_short, new_long = size, int(size * long / short)
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
        if (new_w, new_h) != (w, h):
            im = im.resize((new_w, new_h), Image.BICUBIC)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        im = im.crop((left, top, left + size, top + size)).convert("RGB")
        return np.asarray(im, dtype=np.float32) / 255.0


@pytest.mark.parametrize("shape", [(224, 227), (227, 224), (250, 301), (317, 451), (1000, 771), (64, 64), (600, 600)])
def test_clip_view_is_torchvision_resize_and_centre_crop(tmp_path, shape):
    rng = np.random.default_rng(shape[0])
    path = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)
    np.testing.assert_array_equal(clip_view(path, 224), _published_view(path))


def test_clip_view_converts_to_rgb_after_cropping(tmp_path):
    """open_clip converts to RGB after Resize and CenterCrop: a palette image is resized as a palette
    (PIL resizes "P" images by nearest neighbour), which converting first would not give."""
    rng = np.random.default_rng(5)
    path = tmp_path / "p.png"
    Image.fromarray(rng.integers(0, 256, (250, 301, 3), dtype=np.uint8)).quantize(16).save(path)
    np.testing.assert_array_equal(clip_view(path, 224), _published_view(path))


# ---- 2. retrieval captions: 'a satellite image. ' for RSICD/RSITMD/UCM-captions, raw-string de-duplication

@pytest.fixture
def caption_set(tmp_path):
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.fromarray(scene(120, 130, seed=i)[0].transpose(1, 2, 0)).save(tmp_path / "images" / f"{i}.png")
    captions = ["a river next to fields", "a river  next to fields", "red roofs ", "red roofs", "a road",
                "a river next to fields"]  # whitespace variants are other strings; the last repeats the first
    files = [0, 0, 1, 1, 2, 2]
    return tmp_path, list(zip(files, captions))


def _write_csv(path, pairs):
    path.write_text("filepath,title\n" + "".join(f"images/{i}.png,{c}\n" for i, c in pairs))


def _encoded_texts(monkeypatch, model):
    seen = []
    original = model.encode_text

    def spy(texts, *args, **kwargs):
        seen.extend(t for t in texts if t != "placeholder")  # the image encoder's unused class name
        return original(texts, *args, **kwargs)

    monkeypatch.setattr(model, "encode_text", spy)
    return seen


@pytest.mark.parametrize("name,prefixed", [("RSICD_img_txt_pairs_test.csv", True),
                                           ("RSITMD_img_txt_pairs_test.csv", True),
                                           ("ucmcaptions_img_txt_pairs_test.csv", True),
                                           ("skyscript_test.csv", False)])
def test_retrieval_captions_are_prefixed_and_deduplicated_as_published(caption_set, tiny_model, monkeypatch, name,
                                                                       prefixed):
    root, pairs = caption_set
    _write_csv(root / name, pairs)
    # FarSLIP tests/test_retrieval.py: df[title] = 'a satellite image. ' + x for the three sets, then
    # df.groupby(title): one text per distinct (prefixed) string
    prefix = "a satellite image. " if prefixed else ""
    want = list(dict.fromkeys(prefix + c for _, c in pairs))
    seen = _encoded_texts(monkeypatch, tiny_model)
    result = evaluate_retrieval(tiny_model, root / name)
    assert sorted(seen) == sorted(want)
    assert result["captions"] == len(want) == 5 and result["images"] == 3
    assert result["caption_prefix"] == prefix


def test_retrieval_caption_prefix_can_be_named_or_turned_off(caption_set, tiny_model, monkeypatch):
    root, pairs = caption_set
    _write_csv(root / "test.csv", pairs)
    seen = _encoded_texts(monkeypatch, tiny_model)
    notes = []
    assert evaluate_retrieval(tiny_model, root / "test.csv", dataset="rsitmd", notice=notes.append)["caption_prefix"] \
        == PUBLISHED_CAPTION_PREFIX
    assert all(t.startswith("a satellite image. ") for t in seen) and any("prefixed" in n for n in notes)
    seen.clear()
    evaluate_retrieval(tiny_model, root / "test.csv", dataset="rsicd", caption_prefix="")
    assert sorted(seen) == sorted(dict.fromkeys(c for _, c in pairs))


def test_published_prefix_is_recognised_from_the_usual_file_names(tmp_path):
    for path in ("RSICD/dataset_rsicd.json", "x/dataset_RSITMD.json", "UCM_captions/dataset.json",
                 "retrieval/ucmcaptions/ucmcaptions_img_txt_pairs_test.csv"):
        assert published_caption_prefix(tmp_path / path) == PUBLISHED_CAPTION_PREFIX, path
    for path in ("skyscript/SkyScript_test_30K_filtered_by_CLIP_openai.csv", "aid/test.csv", "data/val.csv"):
        assert published_caption_prefix(tmp_path / path) == "", path
    assert published_caption_prefix(tmp_path / "whatever.csv", dataset="UCM-captions") == PUBLISHED_CAPTION_PREFIX
    assert published_caption_prefix(tmp_path / "RSICD.csv", dataset="skyscript") == ""


def test_caption_json_gets_the_prefix_too(tmp_path, tiny_model, monkeypatch):
    (tmp_path / "imgs").mkdir()
    Image.fromarray(scene(100, 100)[0].transpose(1, 2, 0)).save(tmp_path / "imgs" / "0.jpg")
    sentences = [{"raw": "a field ."}, {"raw": "a field ."}]
    data = {"images": [{"filename": "0.jpg", "split": "test", "sentences": sentences}]}
    (tmp_path / "dataset_rsicd.json").write_text(json.dumps(data))
    seen = _encoded_texts(monkeypatch, tiny_model)
    result = evaluate_retrieval(tiny_model, tmp_path / "dataset_rsicd.json", images_root=tmp_path / "imgs")
    assert seen == ["a satellite image. a field ."] and result["captions"] == 1


# ---- 3. global bias: the CLS row of the dense (custom-attention) output, after ln_post and proj

def _segearth_dense_tokens(visual, images: torch.Tensor) -> torch.Tensor:
    """SegEarth-OV VisionTransformer.forward(model_type='SegEarth', ignore_residual=True,
    output_cls_token=True), up to ln_post/proj, for every token [B, 1+N, D]; custom_attn as published
    (LND, heads folded into the batch, bmm)."""
    x = visual.conv1(images)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + visual.positional_embedding
    x = visual.ln_pre(x)
    for blk in visual.transformer.resblocks[:-1]:  # the model's own blocks (batch first)
        x = blk(x)
    blk = visual.transformer.resblocks[-1]
    y = blk.ln_1(x).permute(1, 0, 2)  # NLD → LND
    attn = blk.attn
    num_tokens, bsz, embed_dim = y.size()
    heads, head_dim = attn.num_heads, embed_dim // attn.num_heads
    scale = head_dim ** -0.5
    q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (z.contiguous().view(-1, bsz * heads, head_dim).transpose(0, 1) for z in (q, k, v))
    weights = (F.softmax(torch.bmm(q, q.transpose(1, 2)) * scale, dim=-1)
               + F.softmax(torch.bmm(k, k.transpose(1, 2)) * scale, dim=-1)
               + F.softmax(torch.bmm(v, v.transpose(1, 2)) * scale, dim=-1))
    out = torch.bmm(weights, v).transpose(0, 1).contiguous().view(-1, bsz, embed_dim)
    out = attn.out_proj(out).permute(1, 0, 2)  # LND → NLD
    return visual.ln_post(out) @ visual.proj  # pooled = token 0 ('tok' pooling), tokens = the rest


def test_dense_cls_is_segearth_output_cls_token(tiny_clip):
    torch.manual_seed(0)
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        patches, cls = dense_features(tiny_clip.visual, images, dense_cls=True)
        want = _segearth_dense_tokens(tiny_clip.visual, images)
        _, standard = dense_features(tiny_clip.visual, images, with_cls=True)
    torch.testing.assert_close(cls, want[:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(patches.reshape(3, -1, patches.shape[-1]), want[:, 1:], rtol=1e-5, atol=1e-5)
    # training's image embedding (with_cls) stays the standard one
    torch.testing.assert_close(standard, tiny_clip.visual(images), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(standard, cls, atol=1e-3)
    with pytest.raises(ValueError):
        dense_features(tiny_clip.visual, images, with_cls=True, dense_cls=True)


# ---- 5. sliding windows: RS-OVSS forward_slide, with compute_padsize for crops under 224 px

def _published_padsize(h: int, w: int) -> tuple[int, int, int, int]:
    """RS-OVSS CustomizedSegmentation.compute_padsize → (l, r, t, b)."""
    l = r = t = b = 0
    if w % PATCH:
        lr = PATCH - w % PATCH
        l, r = lr // 2, lr - lr // 2
    if h % PATCH:
        tb = PATCH - h % PATCH
        t, b = tb // 2, tb - tb // 2
    return l, r, t, b


def _published_slide(visual, text: torch.Tensor, img: torch.Tensor, lam: float = 0.0) -> torch.Tensor:
    """RS-OVSS forward_slide + forward_feature (output_cls_token with cls_token_lambda = −λ), [N, h, w]."""
    _, _, h, w = img.shape
    h_grids = max(h - CROP + STRIDE - 1, 0) // STRIDE + 1
    w_grids = max(w - CROP + STRIDE - 1, 0) // STRIDE + 1
    preds = img.new_zeros((1, text.shape[0], h, w))
    count = img.new_zeros((1, 1, h, w))
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1, x1 = hi * STRIDE, wi * STRIDE
            y2, x2 = min(y1 + CROP, h), min(x1 + CROP, w)
            y1, x1 = max(y2 - CROP, 0), max(x2 - CROP, 0)
            crop = img[:, :, y1:y2, x1:x2]
            ch, cw = crop.shape[2:]
            pad = _published_padsize(ch, cw)
            if any(pad):
                crop = F.pad(crop, pad)
            resize = crop.shape[-2:] != (CROP, CROP)  # forward_feature: to the model's input size
            inputs = F.interpolate(crop, size=(CROP, CROP), mode="bilinear") if resize else crop
            tokens = _segearth_dense_tokens(visual, inputs)
            feats = tokens[:, 1:] / tokens[:, 1:].norm(dim=-1, keepdim=True)
            logits = feats @ text.T
            if lam:
                cls = tokens[:, 0] / tokens[:, 0].norm(dim=-1, keepdim=True)
                logits = logits + (cls @ text.T).unsqueeze(1) * -lam
            g = CROP // PATCH
            logits = logits.permute(0, 2, 1).reshape(1, -1, g, g)
            logits = F.interpolate(logits, size=crop.shape[-2:], mode="bilinear")
            if any(pad):
                logits = logits[:, :, pad[2]:pad[2] + ch, pad[0]:pad[0] + cw]
            preds += F.pad(logits, (x1, w - x2, y1, h - y2))
            count[:, :, y1:y2, x1:x2] += 1
    return (preds / count)[0]


@pytest.fixture(scope="module")
def segmenter(tiny_model):
    return Segmenter(tiny_model, "building,roof; road; tree,forest; water", InferenceOptions(batch_size=4))


@pytest.mark.parametrize("shape", [(150, 448), (100, 150), (37, 230), (300, 90), (336, 400)],
                         ids=["short", "both-small", "thin-odd", "narrow", "no-padding"])
@pytest.mark.parametrize("lam", [0.0, 0.3], ids=["paper", "global-bias"])
def test_sliding_with_centred_padding_is_published_forward_slide(segmenter, shape, lam):
    image = prepare_image(np.random.default_rng(shape[0]).integers(0, 256, (*shape, 3), dtype=np.uint8))
    got = sliding_logits(segmenter.model, image, segmenter.text, CROP, STRIDE, 4, lam, pad="centre")
    with torch.no_grad():
        want = _published_slide(segmenter.model.clip.visual, segmenter.text, image[None], lam)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_centred_padding_reassembles_from_pieces_and_through_numpy(segmenter):
    """Pieces of the global grid (their strips cut, shipped as numpy as the batch runner does, and added)
    give the whole image's result with centred padding too."""
    from engine.batch.work import strips_from_numpy, strips_to_numpy

    h, w = 150, 620
    image = prepare_image(np.random.default_rng(8).integers(0, 256, (h, w, 3), dtype=np.uint8))
    n = segmenter.text.shape[0]
    whole = sliding_logits(segmenter.model, image, segmenter.text, CROP, STRIDE, 4, pad="centre")
    grid = CropGrid(h, w, CROP, STRIDE)
    left, right = Box(0, 0, h, 300), Box(0, 300, h, 320)
    strips = crop_strips(segmenter.model, image, segmenter.text, CROP, grid.starting_in(left), Box(0, 0, h, w), 4,
                         pad="centre")
    assert strips.shape[3:] == (_published_padsize(h, CROP)[2],)  # the padding above the crop is carried
    rest = crop_strips(segmenter.model, image, segmenter.text, CROP, grid.starting_in(right), Box(0, 0, h, w), 4,
                       pad="centre")
    assembled = RowStrips(right)
    assembled.include(strips_from_numpy(*strips_to_numpy(strips.part(right, copy=True))))
    assembled.include(rest.part(right))
    torch.testing.assert_close(mean_strips(assembled, n, "cpu"), whole[:, :, 300:], rtol=1e-5, atol=1e-6)


def test_predict_is_the_published_pipeline(segmenter):
    """predict = mmcv resize → forward_slide (centred padding) → logits resized to the label → ×50,
    softmax, max over synonyms, argmax (RS-OVSS postprocess_result). Random name embeddings stand in for
    the text ones, so that the tiny random network's labels vary over the image."""
    segmenter = copy.copy(segmenter)
    g = torch.Generator().manual_seed(0)
    segmenter.text = F.normalize(torch.randn(segmenter.text.shape, generator=g), dim=-1)
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (300, 896, 3), dtype=np.uint8)  # → 150 × 448: short crops, padded
    label_shape = (300, 896)
    got = predict(segmenter, image, label_shape)
    h, w = _mmcv_size(300, 896)
    x = prepare_image(_cv2_linear(image, h, w))[None]
    with torch.no_grad():
        logits = _published_slide(segmenter.model.clip.visual, segmenter.text, x)
    logits = F.interpolate(logits[None], size=label_shape, mode="bilinear")[0] * 50
    probs = logits.softmax(0)
    idx = torch.tensor(segmenter.prompts.name_to_class)
    one_hot = F.one_hot(idx).T.view(int(idx.max()) + 1, len(idx), 1, 1)
    want = (probs[None] * one_hot).max(1)[0].argmax(0).numpy()
    assert got.shape == label_shape and len(np.unique(want)) > 1
    assert (got == want).mean() > 0.999  # the resize may differ by one grey level at float ties


def test_paper_preset_logits_are_those_without_global_bias(segmenter):
    """The paper preset (no bias) never asks for a CLS: its logits are the patch cosines alone."""
    image = prepare_image(np.random.default_rng(4).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    got = sliding_logits(segmenter.model, image, segmenter.text, CROP, STRIDE, 4, 0.0, pad="centre")
    with torch.no_grad():
        feats = F.normalize(dense_features(segmenter.model.clip.visual, image[None])[0], dim=-1)
    g = CROP // PATCH
    want = F.interpolate((feats @ segmenter.text.T).permute(2, 0, 1)[None], size=(CROP, CROP), mode="bilinear",
                         align_corners=False)[0]
    assert feats.shape[:2] == (g, g)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_embeddings_cached_under_the_earlier_view_are_not_reused(tmp_path, tiny_model):
    """A cache of image embeddings made before the view followed torchvision (keyed by the model alone)
    is encoded afresh, not served."""
    from training.evaluate.identity import file_stamp, model_identity
    from training.evaluate.zero_shot import evaluate_classification, read_image_folder

    for cls in ("forest", "river"):
        (tmp_path / "AID" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(scene(150, 170, seed=i)[0].transpose(1, 2, 0)).save(tmp_path / "AID" / cls / f"{i}.png")
    rows, _ = read_image_folder(tmp_path / "AID")
    paths = [r["filepath"] for r in rows]
    cache = tmp_path / "emb.npz"
    np.savez(cache, model=np.array(model_identity(tiny_model)), paths=np.array(paths, dtype=str),
             stamps=np.array([file_stamp(p) for p in paths], dtype=str),
             embeddings=np.zeros((len(paths), tiny_model.clip.text_projection.shape[1]), np.float32))
    encoded = []
    result = evaluate_classification(tiny_model, tmp_path / "AID", cache=cache,
                                     progress=lambda done, total: encoded.append(done))
    assert encoded and encoded[-1] == len(paths)  # every image encoded again
    assert result["top1"] == evaluate_classification(tiny_model, tmp_path / "AID")["top1"]
