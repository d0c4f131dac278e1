"""Text-prompted dense segmentation of an RGB image: the engine's one inference path.

    result = segment_image(rgb_uint8, "building,roof; road; tree; water", model)
    result.class_map  # H×W uint8 class indices (255 = no class)
    result.scores     # C×H×W float32 class probabilities

`Segmenter` binds a model, a prompt set and options (text embeddings computed once); the GeoTIFF
pipeline, the HTTP API and the evaluation all segment through it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from engine.boxes import Box
from engine.dense.forward import compile_dense
from engine.dense.options import DEFAULT_PRESET, InferenceOptions, preset
from engine.dense.prompts import PromptSet
from engine.dense.scoring import class_probabilities, classes_from_logits
from engine.dense.sliding import ProgressFn, normalise, sliding_logits
from engine.dense.text import embed_prompts
from engine.errors import InputError
from engine.models import LoadedModel

if TYPE_CHECKING:
    from engine.dense.taught import TaughtClasses

def _host_tensor(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor sharing `array`'s memory, or a copy of it when that memory is read-only (a PIL
    image, a memory map) or not contiguous: torch warns about, and must not write to, read-only arrays."""
    if not (array.flags.writeable and array.flags.c_contiguous):
        array = np.array(array, order="C")
    return torch.from_numpy(array)


def prepare_image(image: np.ndarray, device: "torch.device | str" = "cpu") -> torch.Tensor:
    """H×W×3 RGB (uint8 0-255, or float 0-1) → CLIP-normalised float32 tensor [3, H, W] on `device`
    (the pixels travel as they are, uint8 stays uint8, and are normalised there)."""
    if not isinstance(image, np.ndarray):
        raise InputError("image must be a numpy array of shape H×W×3")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image must be RGB with shape H×W×3, got shape {tuple(image.shape)}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError("image is empty")
    if image.dtype == np.uint8:
        pixels = _host_tensor(image)
    elif np.issubdtype(image.dtype, np.floating):
        if not np.isfinite(image).all():
            raise InputError("image holds NaN or infinite values")
        if image.min() < -1e-3 or image.max() > 1.0 + 1e-3:
            raise InputError("float images must hold values in [0, 1]")
        pixels = _host_tensor(image.astype(np.float32, copy=False)).clamp(0, 1)  # the caller's array untouched
    else:
        raise InputError(f"image dtype {image.dtype} not supported: pass uint8 (0-255) or float (0-1)")
    return normalise(pixels.permute(2, 0, 1).to(device))


CPU_BATCH = 4  # on CPUs a ViT-B costs the same per crop at batch 1 and 16; 4 keeps memory low
MAX_GPU_BATCH = 256  # beyond this a ViT-B-16 gains < 5 % crops/s (H200: 8,000 at 64, 8,390 at 256)


def default_batch_size(model: LoadedModel, crop: int, n_names: int) -> int:
    """Crops per forward pass: CPU_BATCH on a CPU; on a GPU as many as half its free memory holds
    (estimated from the network's token count and width), at most MAX_GPU_BATCH, at least 8. Free
    memory counts what PyTorch's caching allocator holds unused (an earlier job's blocks): the
    driver reports it as taken, so a server's later jobs would otherwise get ever smaller batches."""
    if model.device.type != "cuda":
        return CPU_BATCH
    free, _ = torch.cuda.mem_get_info(model.device)
    free += torch.cuda.memory_reserved(model.device) - torch.cuda.memory_allocated(model.device)
    visual = model.clip.visual
    tokens = (crop // model.patch_size) ** 2 + 1
    width = int(visual.conv1.weight.shape[0])
    heads = visual.transformer.resblocks[-1].attn.num_heads
    element = torch.finfo(model.dtype).bits // 8
    activations = element * (16 * tokens * width + 6 * heads * tokens * tokens)  # a block's peak, generous
    pixels = 4 * 3 * crop * crop * 3  # the crop as float32: cut, resized/cast, guidance
    logits = 4 * n_names * tokens * 4  # patch logit maps and their products
    per_crop = activations + pixels + logits
    return int(max(8, min(MAX_GPU_BATCH, (free // 2) // per_crop // 8 * 8)))


@dataclass
class SegmentationResult:
    class_map: np.ndarray  # H×W uint8
    scores: np.ndarray  # C×H×W float32 probabilities
    classes: list[str]  # one label per class index
    prompts: PromptSet
    background_index: int | None


def segmented_classes(prompts: "str | list[str] | PromptSet | TaughtClasses", options: InferenceOptions
                      ) -> tuple[PromptSet, int | None]:
    """(the classes a segmenter embeds — taught ones by their names — with the options' background class
    added, that class's index or None)."""
    from engine.dense.taught import TaughtClasses

    prompts = PromptSet.parse(prompts.prompts if isinstance(prompts, TaughtClasses) else prompts)
    if options.background:
        return prompts.with_background(options.background)
    return prompts, None


class Segmenter:
    """A model, a prompt set and options, ready to segment images or pieces of a large one."""

    def __init__(self, model: LoadedModel, prompts: "str | list[str] | PromptSet | TaughtClasses",
                 options: InferenceOptions | None = None):
        from engine.dense.taught import TaughtClasses

        self.model = model
        self.options = (options or preset(DEFAULT_PRESET)).validate()
        taught = prompts if isinstance(prompts, TaughtClasses) else None
        self.taught = taught
        prompts, self.background_index = segmented_classes(prompts, self.options)
        self.prompts = prompts
        self.crop = self.options.crop or model.image_size
        self.stride = self.options.stride or max(1, self.crop // 2)
        if self.stride > self.crop:
            raise InputError("stride must not exceed the crop size")
        self.batch_size = self._batch_size()
        self._compile()
        self.upsampler = self._load_upsampler() if self.options.upsampler else None
        # text embeddings per name, mixed with the prototypes of classes taught from labels
        self.text = (taught.rows(model, prompts, self.options.template_set) if taught
                     else embed_prompts(model, prompts, self.options.template_set))

    def _batch_size(self) -> int:
        return self.options.batch_size or default_batch_size(self.model, self.crop, len(self.prompts.names))

    def without_model(self) -> "Segmenter":
        """A copy without its network, text embeddings on the CPU: what is shipped to other processes
        (Ray workers), which give it their own copy of the network with `attach`."""
        light = copy.copy(self)
        light.model = None
        light.text = self.text.cpu()
        return light

    def attach(self, model: LoadedModel) -> None:
        """Run on `model` (the same weights, perhaps on another device): the text embeddings and the
        up-sampler move to its device, and the default batch size follows it."""
        self.model = model
        self.text = self.text.to(model.device)
        if self.upsampler is not None:
            self.upsampler = self.upsampler.to(model.device)
        self.batch_size = self._batch_size()
        self._compile()

    def _compile(self) -> None:
        if self.options.compile and self.model.dense_forward is None:
            compile_dense(self.model)

    def _load_upsampler(self):
        from engine.dense.upsampler import load_upsampler

        visual = self.model.clip.visual
        feat_dim = int(visual.proj.shape[1]) if visual.proj is not None else int(visual.conv1.weight.shape[0])
        upsampler = load_upsampler(self.options.upsampler, feat_dim, self.model.device)
        grid = self.crop // self.model.patch_size
        if 2 * grid <= upsampler.radius:
            raise InputError(f"crop of {self.crop} px is too small for the up-sampler (a patch grid of at "
                             f"least {upsampler.radius // 2 + 1} is needed)")
        return upsampler

    @property
    def classes(self) -> list[str]:
        return self.prompts.labels

    def logits(self, image: torch.Tensor, boxes: list[Box] | None = None, region: Box | None = None,
               progress: ProgressFn | None = None) -> torch.Tensor:
        """Mean cosine logits over names [N, h, w] of a prepared image (or a region of it)."""
        o = self.options
        return sliding_logits(self.model, image, self.text, self.crop, self.stride, self.batch_size,
                              o.global_bias, boxes=boxes, region=region, progress=progress,
                              upsampler=self.upsampler)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities [C, ...] of mean logits [N, ...] (for score rasters)."""
        return class_probabilities(logits, self.prompts.name_to_class, self.options.logit_scale)

    def labels(self, logits: torch.Tensor, probabilities: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 class indices [...] of mean logits [N, ...], thresholded to background / NO_CLASS
        (pass their `probabilities` when they are made anyway: the threshold then uses them)."""
        return self.labels_and_best(logits, probabilities=probabilities)[0]

    def labels_and_best(self, logits: torch.Tensor, with_best: bool = False,
                        probabilities: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`labels` and, when `with_best`, the best class probability per pixel (else None)."""
        o = self.options
        return classes_from_logits(logits, self.prompts.name_to_class, o.logit_scale, o.prob_threshold,
                                   self.background_index, with_best, probabilities)

    def segment(self, image: np.ndarray, progress: ProgressFn | None = None) -> SegmentationResult:
        logits = self.logits(prepare_image(image, self.model.device), progress=progress)
        probs = self.probabilities(logits)
        return SegmentationResult(
            class_map=self.labels(logits, probs).cpu().numpy(),
            scores=probs.cpu().numpy().astype(np.float32, copy=False),
            classes=self.classes, prompts=self.prompts, background_index=self.background_index)


def segment_image(image: np.ndarray, prompts: "str | list[str] | PromptSet", model: LoadedModel,
                  options: InferenceOptions | None = None, progress: ProgressFn | None = None) -> SegmentationResult:
    """Segment one RGB image by typed class names (see the module docstring)."""
    return Segmenter(model, prompts, options).segment(image, progress=progress)
