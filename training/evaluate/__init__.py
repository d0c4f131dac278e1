"""Evaluation against the paper's benchmarks through the engine's own dense and scene code:
OVSS mIoU, zero-shot scene classification, image-text retrieval."""
