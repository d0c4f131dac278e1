"""Image-level (CLS) classification of whole crops: regions, grid cells, scenes.

Each crop is encoded on its own with the standard forward (the embedding FarSLIP's stage 2 aligns
with "a satellite image of {category}"), compared by cosine with the class names' text embeddings
(the `rs` templates by default) and turned into probabilities: softmax over all names of the
model's learned logit scale × cosine, max over each class's synonyms.

Classes taught from labels (`engine.dense.taught`) are prototypes of segmentation's patch features,
not of whole-image embeddings: with them a crop is segmented as `farslip segment` would (the taught
file's template set and global bias) and its class probabilities are the mean over its pixels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from engine.dense.prompts import PromptSet
from engine.dense.scoring import class_probabilities
from engine.dense.segment import Segmenter, prepare_image
from engine.dense.sliding import crop_maps
from engine.dense.text import embed_prompts
from engine.models import LoadedModel

if TYPE_CHECKING:
    from engine.dense.taught import TaughtClasses

SCENE_TEMPLATES = "rs"  # the template set scenes and cells are classified with, unless told otherwise

def logit_scale(model: LoadedModel) -> float:
    return float(min(model.clip.logit_scale.exp().item(), 100.0))


class SceneClassifier:
    """A model and a prompt set, ready to classify batches of RGB crops."""

    def __init__(self, model: LoadedModel, prompts: "str | list[str] | PromptSet | TaughtClasses",
                 template_set: str = SCENE_TEMPLATES, batch_size: int | None = None):
        from engine.dense.taught import TaughtClasses

        self.model = model
        self.batch_size = batch_size or (64 if model.device.type == "cuda" else 8)
        self.segmenter: Segmenter | None = None
        if isinstance(prompts, TaughtClasses):
            self.segmenter = Segmenter(model, prompts, prompts.segment_options())
            self.prompts, self.text = self.segmenter.prompts, self.segmenter.text
        else:
            self.prompts = PromptSet.parse(prompts)
            self.text = embed_prompts(model, self.prompts, template_set)

    @property
    def classes(self) -> list[str]:
        return self.prompts.labels

    def embed(self, crops: list[np.ndarray]) -> torch.Tensor:
        """Normalised CLS embeddings [B, D] of H×W×3 crops at the model's input size."""
        out = []
        for start in range(0, len(crops), self.batch_size):
            batch = torch.stack([prepare_image(c) for c in crops[start:start + self.batch_size]])
            out.append(self.model.encode_image(batch))
        return torch.cat(out) if out else torch.zeros(0, self.text.shape[1])

    def probabilities(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[B, C] class probabilities of normalised image embeddings."""
        cosine = embeddings.to(self.text.device) @ self.text.T  # [B, N]
        return class_probabilities(cosine.T, self.prompts.name_to_class, logit_scale(self.model)).T

    def classify(self, crops: list[np.ndarray]) -> torch.Tensor:
        """[B, C] class probabilities of H×W×3 crops at the model's input size."""
        if self.segmenter is not None:
            return self._segmented(crops)
        return self.probabilities(self.embed(crops))

    def _segmented(self, crops: list[np.ndarray]) -> torch.Tensor:
        """Taught classes: each crop's segmentation class probabilities, averaged over the crop."""
        seg, out = self.segmenter, []
        for start in range(0, len(crops), self.batch_size):
            batch = torch.stack([prepare_image(c, self.model.device) for c in crops[start:start + self.batch_size]])
            maps, _ = crop_maps(self.model, batch, seg.text, batch.shape[-1], seg.options.global_bias)
            probs = class_probabilities(maps.transpose(0, 1), seg.prompts.name_to_class, seg.options.logit_scale)
            out.append(probs.mean(dim=(2, 3)).T.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))
