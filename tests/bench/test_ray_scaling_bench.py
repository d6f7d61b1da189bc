"""``make bench``: Ray's scaling from one worker to two, next to two processes that share nothing
(issue 16; measured by `tests/bench/ray_scaling.py`, about 7 minutes on the 2-core box). Speed is
printed, not asserted; what is asserted is that every way of running the build writes the same shards."""
from __future__ import annotations

import pytest

from tests.bench.ray_scaling import main

pytestmark = pytest.mark.bench


def test_ray_scaling_3000(tmp_path):
    runs = main(["--work", str(tmp_path), "--images", "3000", "--shard-size", "100"])["runs"]
    assert all(r["accepted"] == r["images"] for r in runs.values())
    assert len({digest for r in runs.values() for digest in r["shards"]}) == 1
