"""Training/evaluation tests reuse the engine tests' tiny models."""

from tests.engine.conftest import tiny_clip, tiny_model  # noqa: F401
