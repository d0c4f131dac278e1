"""Dense text-prompted inference: FarSLIP's dense forward, prompts, sliding windows, scoring."""

from engine.dense.options import PRESETS, InferenceOptions, preset
from engine.dense.prompts import NO_CLASS, PromptSet
from engine.dense.segment import SegmentationResult, Segmenter, prepare_image, segment_image

__all__ = ["PRESETS", "InferenceOptions", "preset", "NO_CLASS", "PromptSet", "SegmentationResult",
           "Segmenter", "prepare_image", "segment_image"]
