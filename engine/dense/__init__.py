"""Dense text-prompted inference: FarSLIP's dense forward, prompts, sliding windows, scoring.

The segmenter's names load torch and open_clip (seconds) on their first use, not on importing this
package: the command line's parser reads the options and prompts here and answers `--help` or a bad
argument at once.
"""

from engine.dense.options import PRESETS, InferenceOptions, preset
from engine.dense.prompts import NO_CLASS, PromptSet

_FROM_SEGMENT = ("SegmentationResult", "Segmenter", "prepare_image", "segment_image")

__all__ = ["PRESETS", "InferenceOptions", "preset", "NO_CLASS", "PromptSet", *_FROM_SEGMENT]


def __getattr__(name: str):
    if name in _FROM_SEGMENT:
        from engine.dense import segment

        return getattr(segment, name)
    raise AttributeError(f"module 'engine.dense' has no attribute '{name}'")
