"""The Ray runner gives items back in the order it was given them, whatever order its workers
finish in: units then complete one after another and the build's sink holds one unit at a time
(the driver-memory bound of docs/benchmarks.md). Each worker process runs OpenCV on the CPUs
its stage group reserved, not on every core of the machine."""
import time

import pytest

from denseface.annotators.base import Item, Reject, Stage
from denseface.config import BuildConfig, StageConfig
from denseface.etl.runner import LocalRunner, RayRunner, _GroupWorker

pytestmark = pytest.mark.ray


class _Delay(Stage):
    """Sleeps as long as the item says, then rejects it (nothing to encode)."""

    name = "delay"

    def process_one(self, item: Item) -> None:
        time.sleep(item.fields["delay"])
        raise Reject("done")


def test_ray_runner_keeps_input_order():
    import ray

    stage = _Delay(BuildConfig(), StageConfig(batch_size=1))
    # unit 0's first item is slow: a runner yielding items as they finish would put later units first
    items = [Item(key=f"k{i:02d}", identity="x", source="test", source_path=f"/x/{i}", unit=i // 4,
                  fields={"delay": 1.0 if i == 0 else 0.0}) for i in range(16)]
    try:
        out = list(RayRunner([stage], jpeg_quality=95, workers=2).run(items))
    finally:
        ray.shutdown()
    assert [it.key for it in out] == [it.key for it in items]
    assert all(it.reason == "delay: done" for it in out)


def test_workers_hold_opencv_to_their_reserved_cpus():
    import cv2

    before = cv2.getNumThreads()
    try:
        for cpus in (2.0, 1.0):
            _GroupWorker([_Delay(BuildConfig(), StageConfig(num_cpus=cpus))], last=True, jpeg_quality=95)
            assert cv2.getNumThreads() == int(cpus)
        cv2.setNumThreads(before)
        LocalRunner([_Delay(BuildConfig(), StageConfig(num_cpus=0.5))], jpeg_quality=95)
        assert cv2.getNumThreads() == 1  # a fraction of a CPU is still one thread
    finally:
        cv2.setNumThreads(before)
