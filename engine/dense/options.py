"""Inference options and named presets.

`paper` reproduces the published OVSS protocol (no global bias, no threshold, no background class).
`enhanced` adds SegEarth-OV's global-bias subtraction (λ = 0.3); a background threshold stays a
per-task choice, so it is set explicitly (`prob_threshold`, `background`). The learned feature
up-sampler (`upsampler`: a weights file, see `engine.dense.upsampler`) is off in every preset, since
its weights are not shipped; any preset can add it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from engine.dense.prompts import TEMPLATE_SET_NAMES
from engine.errors import InputError


@dataclass(frozen=True)
class InferenceOptions:
    crop: int | None = None         # crop size in px (default: the model's input size, 224)
    stride: int | None = None       # default: crop // 2
    batch_size: int | None = None   # crops per forward pass (default: from free GPU memory, 4 on a CPU)
    template_set: str = "imagenet80"
    logit_scale: float = 50.0       # softmax temperature applied to the averaged cosine logits
    global_bias: float = 0.0        # λ: patch logits − λ · image-level (CLS) logits, per crop
    prob_threshold: float = 0.0     # pixels whose best class probability is below → background
    background: str | None = None   # background class name (added when missing); None: 255 = no class
    upsampler: str | None = None    # SimFeatUp JBU weights (path or hf://owner/repo/file); None: bilinear
    compile: bool = False           # torch.compile the dense forward (same results; faster after compiling)

    def validate(self) -> "InferenceOptions":
        if self.crop is not None and self.crop < 16:
            raise InputError("crop must be at least 16 px")
        if self.stride is not None and (self.stride < 1 or (self.crop and self.stride > self.crop)):
            raise InputError("stride must be between 1 and the crop size")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError("batch size must be at least 1")
        if self.template_set not in TEMPLATE_SET_NAMES:
            raise InputError(f"unknown template set '{self.template_set}'")
        if not 0.0 <= self.prob_threshold < 1.0:
            raise InputError("probability threshold must be in [0, 1)")
        if not 0.0 <= self.global_bias <= 1.0:
            raise InputError("global bias λ must be in [0, 1]")
        if self.logit_scale <= 0:
            raise InputError("logit scale must be positive")
        if self.upsampler is not None:
            from engine.dense.upsampler import check_spec

            check_spec(self.upsampler)
        return self

    def with_overrides(self, **changes) -> "InferenceOptions":
        changes = {k: v for k, v in changes.items() if v is not None}
        return replace(self, **changes).validate()


PRESETS: dict[str, InferenceOptions] = {
    "paper": InferenceOptions(),
    "enhanced": InferenceOptions(global_bias=0.3),
}
DEFAULT_PRESET = "paper"


def preset(name: str) -> InferenceOptions:
    if name not in PRESETS:
        raise InputError(f"unknown preset '{name}' (use one of: {', '.join(PRESETS)})")
    return PRESETS[name]
