"""Training/evaluation tests reuse the engine tests' tiny models; `scene_dataset` is a small set of
synthetic aerial scenes written as MGRS records, webdataset shards and labelled GeoTIFFs."""

import pytest

from tests.engine.conftest import tiny_clip, tiny_model  # noqa: F401


@pytest.fixture(scope="session")
def scene_dataset(tmp_path_factory):
    from training.data.synthetic import write_scene_dataset

    return write_scene_dataset(tmp_path_factory.mktemp("scenes"), 16, size=224, seed=0)
