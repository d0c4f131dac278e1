"""Classes taught from a user's labelled polygons: a visual prototype per class beside its names.

Segmentation scores a pixel against each class name by the cosine between the network's normalised
patch features (up-sampled and averaged over the crops covering the pixel) and the name's text
embedding. A taught class adds a prototype in the same space — the normalised mean of the patch
features inside the user's polygons of that class, from segmentation's own crops (see
`engine.geo.teach`) — and each of its names is scored against

    row = normalise((1 − α) · text_embedding + α · prototype)

so everything after (softmax over names, max over synonyms, threshold, arg-max) is segmentation's
own. α = 0 is the text alone, α = 1 the labels alone (a class whose name means nothing to the model).
α is chosen from the labels themselves: prototypes from one half of each class's polygons score the
other half's patches and the other way round, and the α with the best held-out mIoU wins (ties go to
less weight on the labels).

A `.classes.json` file (`TaughtClasses.save`) holds the class lines, the prototypes, α, the model it
was made with (name, architecture and a fingerprint of its weights: a file made for another model is
refused) and how it was made.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from engine.dense.prompts import PromptSet
from engine.dense.text import embed_prompts
from engine.errors import InputError
from engine.taught_format import FORMAT, TaughtFile

if TYPE_CHECKING:
    from engine.dense.options import InferenceOptions

ALPHAS = tuple(round(i / 10, 1) for i in range(11))
MIN_SAMPLES = 2  # patches a class needs to be taught (its two halves choose α)


def model_fingerprint(model) -> str:
    """A short hash of the weights that shape the dense features and the text embeddings."""
    clip = model.clip
    digest = hashlib.sha256()
    parts = [clip.visual.proj, clip.visual.conv1.weight, getattr(clip, "text_projection", None),
             clip.token_embedding.weight[:16]]
    for tensor in parts:
        if isinstance(tensor, torch.Tensor):
            digest.update(np.ascontiguousarray(tensor.detach().float().cpu().numpy()).round(4).tobytes())
    return digest.hexdigest()[:16]


def mix(text: torch.Tensor, prototype: torch.Tensor, alpha: float) -> torch.Tensor:
    """Rows [n, D] of one class's names mixed with its prototype [D] (unit rows)."""
    return F.normalize((1.0 - alpha) * text + alpha * prototype[None].to(text), dim=-1)


def predict(features: torch.Tensor, rows: torch.Tensor, name_to_class: list[int]) -> torch.Tensor:
    """The class segmentation gives pixels with `features` [P, D] (the arg-max name's class: softmax
    and the max over synonyms keep the order of the cosines)."""
    index = torch.tensor(name_to_class, device=features.device)
    return index[(features @ rows.T).argmax(dim=1)]


def mean_iou(truth: np.ndarray, predicted: np.ndarray, classes: list[int]) -> float:
    ious = []
    for c in classes:
        union = np.sum((truth == c) | (predicted == c))
        if union:
            ious.append(np.sum((truth == c) & (predicted == c)) / union)
    return float(np.mean(ious)) if ious else 0.0


def _halves(polygons: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Two halves of a class's labelled samples: by polygon when there are two or more, else the one
    polygon's samples split alternately."""
    if len(polygons) >= 2:
        return (np.concatenate(polygons[0::2]), np.concatenate(polygons[1::2]))
    only = polygons[0]
    return only[0::2], only[1::2]


def _prototype(features: np.ndarray) -> torch.Tensor:
    return F.normalize(torch.from_numpy(features).float().mean(dim=0), dim=0)


@dataclass
class TaughtClasses:
    prompts: PromptSet
    prototypes: dict[str, np.ndarray]  # class label → unit prototype [D]
    alpha: float
    model: dict  # name, arch, fingerprint
    made: dict = field(default_factory=dict)

    # --- learning --------------------------------------------------------------------------------
    @classmethod
    def learn(cls, model, prompts: PromptSet, features: dict[int, list[np.ndarray]], template_set: str,
              made: dict | None = None, text: torch.Tensor | None = None) -> "TaughtClasses":
        """Prototypes and α from `features`: per class index, one [P, D] array of patch features per
        labelled polygon (segmentation's own, see `engine.geo.teach`). `text`: the prompts' text
        embeddings when already computed (a segmenter's), else they are embedded here."""
        labelled = sorted(c for c, polys in features.items()
                          if polys and sum(len(p) for p in polys) >= MIN_SAMPLES)
        if not labelled:
            raise InputError("no labelled samples: the labels do not overlap the raster, or no label names a class")
        text = (embed_prompts(model, prompts, template_set) if text is None else text).float().cpu()
        name_to_class = prompts.name_to_class
        scores = {}
        for alpha in ALPHAS:
            truth, predicted = [], []
            for fold in (0, 1):
                rows = text.clone()
                held_out = []
                for c in labelled:
                    halves = _halves(features[c])
                    learn_half, test_half = halves[fold], halves[1 - fold]
                    names = [n for n, k in enumerate(name_to_class) if k == c]
                    rows[names] = mix(text[names], _prototype(learn_half), alpha)
                    held_out.append((c, test_half))
                for c, pixels in held_out:
                    truth.append(np.full(len(pixels), c))
                    predicted.append(predict(torch.from_numpy(pixels).float(), rows, name_to_class).numpy())
            scores[alpha] = mean_iou(np.concatenate(truth), np.concatenate(predicted), labelled)
        best = max(ALPHAS, key=lambda a: (round(scores[a], 6), -a))
        prototypes = {prompts.classes[c].label: _prototype(np.concatenate(features[c])).numpy() for c in labelled}
        record = {"held_out_miou_by_alpha": {f"{a:g}": round(s, 4) for a, s in scores.items()},
                  "patches": {prompts.classes[c].label: int(sum(len(p) for p in features[c])) for c in labelled},
                  "polygons": {prompts.classes[c].label: len(features[c]) for c in labelled}, **(made or {})}
        return cls(prompts, prototypes, best, {"name": model.name, "arch": model.arch,
                                               "fingerprint": model_fingerprint(model)}, record)

    # --- use ------------------------------------------------------------------------------------
    def check_model(self, model) -> None:
        if self.model.get("arch") != model.arch or self.model.get("fingerprint") != model_fingerprint(model):
            raise InputError(f"these taught classes were made with model {self.model.get('name')} "
                             f"({self.model.get('arch')}); this run uses {model.name} ({model.arch}): teach them "
                             f"again with this model (farslip classes learn ... --model {model.name})")

    def rows(self, model, prompts: PromptSet, template_set: str) -> torch.Tensor:
        """The embedding rows segmentation scores against: each name's text embedding, mixed with its
        class's prototype where the class was taught (`prompts` may add a background class)."""
        self.check_model(model)
        text = embed_prompts(model, prompts, template_set)
        if any(len(p) != text.shape[1] for p in self.prototypes.values()):
            raise InputError(f"these taught classes hold {len(next(iter(self.prototypes.values())))}-long "
                             f"prototypes; model {model.name} gives {text.shape[1]}-long features")
        name_to_class = prompts.name_to_class
        for c, line in enumerate(prompts.classes):
            prototype = self.prototypes.get(line.label)
            if prototype is not None:
                names = [n for n, k in enumerate(name_to_class) if k == c]
                text[names] = mix(text[names].float(), torch.from_numpy(prototype), self.alpha).to(text.dtype)
        return text

    def segment_options(self) -> "InferenceOptions":
        """The inference options the prototypes were made under (template set, global bias), on the
        default preset: what a run that is not a segmentation (`classify`) scores the classes with."""
        from engine.dense.options import DEFAULT_PRESET, preset

        made = {k: self.made[k] for k in ("template_set", "global_bias") if self.made.get(k) is not None}
        return preset(DEFAULT_PRESET).with_overrides(**made)

    def differences(self, options: "InferenceOptions", working_gsd: float | None,
                    bands: tuple[int, ...] | None = None, band_count: int | None = None) -> list[str]:
        """One note per setting of a run that differs from the one the classes were taught under (bands
        read as red, green, blue — of a raster with as many bands —, working GSD, global bias, template
        set): the labels' prototypes are features of those pixels, at that scale and in that setting, so
        a run under others reads them less well."""
        made, notes = self.made, []
        taught_bands, taught_count = made.get("bands"), made.get("band_count")
        if (bands is not None and taught_bands and taught_count == band_count
                and list(bands) != list(taught_bands)):
            notes.append(f"the taught classes were made from bands {','.join(map(str, taught_bands))} as red, green, "
                         f"blue and this run reads bands {','.join(map(str, bands))}: pass --bands "
                         f"{','.join(map(str, taught_bands))} if this raster's bands are in the same order")
        taught_gsd = made.get("working_gsd_m")
        if taught_gsd and working_gsd and abs(working_gsd / taught_gsd - 1) > 0.01:
            notes.append(f"the taught classes were made at {taught_gsd:g} m per pixel and this run works at "
                         f"{working_gsd:g} m: teach at the resolution you segment at, or pass --gsd {taught_gsd:g}")
        bias = made.get("global_bias")
        if bias is not None and abs(bias - options.global_bias) > 1e-9:
            notes.append(f"the taught classes were made with global bias {bias:g} and this run uses "
                         f"{options.global_bias:g}: pass --global-bias {bias:g} (or the preset they were taught with)")
        if made.get("template_set") and made["template_set"] != options.template_set:
            notes.append(f"the taught classes were made with templates '{made['template_set']}' and this run uses "
                         f"'{options.template_set}'")
        return notes

    def digest(self) -> str:
        """A short hash of what changes a result: classes, prototypes, α, model."""
        digest = hashlib.sha256(json.dumps([self.prompts.as_text(), self.alpha, self.model], sort_keys=True).encode())
        for label in sorted(self.prototypes):
            digest.update(label.encode() + np.round(self.prototypes[label], 6).astype(np.float32).tobytes())
        return digest.hexdigest()[:16]

    # --- file -----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        data = {"format": FORMAT, "classes": [", ".join(c.names) for c in self.prompts.classes],
                "alpha": self.alpha, "model": self.model, "made": self.made,
                "prototypes": {label: [round(float(v), 7) for v in p] for label, p in self.prototypes.items()}}
        partial = path.with_name(f".{path.name}.partial")
        try:
            partial.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
            partial.replace(path)
        finally:  # a write that failed (a full disk) leaves no partial file
            partial.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TaughtClasses":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot read taught classes {path}: {exc.strerror or exc}") from None
        except ValueError:
            raise InputError(f"{path.name} is not a taught-classes file (not UTF-8 text)") from None
        return cls.from_json(text, path.name)

    @classmethod
    def from_json(cls, text: str | bytes, name: str = "the taught classes") -> "TaughtClasses":
        """A taught-classes file's content, checked (a file, or one sent to the engine)."""
        from pydantic import ValidationError

        try:
            data = TaughtFile.model_validate_json(text)
        except ValidationError as exc:
            error = exc.errors()[0]
            if error["type"] == "json_invalid":
                raise InputError(f"{name} is not a taught-classes file (not JSON)") from None
            if error["loc"][:1] == ("format",) or error["type"] == "model_type":
                raise InputError(f"{name} is not a taught-classes file ({FORMAT}); make one with farslip "
                                 "classes learn") from None
            where = ".".join(str(p) for p in error["loc"])
            raise InputError(f"{name}: a taught-classes file whose {where or 'content'} is wrong "
                             f"({error['msg']})") from None
        prompts = PromptSet.parse(data.classes)
        prototypes = {k: np.asarray(v, dtype=np.float32) for k, v in data.prototypes.items()}
        if set(prototypes) - set(prompts.labels) or len({p.shape for p in prototypes.values()}) > 1 \
                or not all(np.isfinite(p).all() for p in prototypes.values()):
            raise InputError(f"{name}: its prototypes do not match its classes")
        return cls(prompts, prototypes, data.alpha, data.model, data.made)
