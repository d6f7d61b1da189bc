"""The same build on Ray Data (a local Ray started by the test) gives the same dataset."""
import pandas as pd
import pytest

from denseface.config import BuildConfig
from denseface.etl.build import build_dataset
from denseface.shards.manifest import read_manifest
from denseface.shards.schema import is_timing_column
from denseface.shards.verify import verify_dataset

pytestmark = pytest.mark.ray


def _frame(root):
    df = read_manifest(root)
    return df[[c for c in df.columns if not is_timing_column(c)]].sort_values("key").reset_index(drop=True)


def test_ray_build_equals_local_build(tmp_path, sample_casia, bad_corpus):
    import ray

    sources = [f"casia:{sample_casia}", f"casia:{bad_corpus}"]
    try:
        ray_res = build_dataset(BuildConfig(sources=sources, out=tmp_path / "ray", runner="ray", workers=2,
                                            shard_size=6, wave_units=2), progress=False)  # 4 units: 2 waves
    finally:
        ray.shutdown()
    local_res = build_dataset(BuildConfig(sources=sources, out=tmp_path / "local", runner="local", workers=1,
                                          shard_size=6), progress=False)
    assert ray_res.balanced and (ray_res.inputs, ray_res.accepted) == (local_res.inputs, local_res.accepted)
    pd.testing.assert_frame_equal(_frame(tmp_path / "ray"), _frame(tmp_path / "local"))
    for tar in sorted((tmp_path / "local").glob("shard-*.tar")):
        assert (tmp_path / "ray" / tar.name).read_bytes() == tar.read_bytes()
    assert verify_dataset(tmp_path / "ray").ok
