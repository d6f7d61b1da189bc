"""Executing stage groups over items: in-process (debugging, tests) or on Ray Data.

Both runners run the same stage objects; Ray only adds the distribution. The last group
also packs each item into its tar members, so encoding happens in the workers and the
driver only writes bytes.
"""
from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np

from denseface.annotators.base import Item, Stage
from denseface.etl.stages import stage_groups
from denseface.shards.rows import sample_json
from denseface.shards.schema import Status, encode_members


def pack(item: Item, jpeg_quality: int) -> None:
    """Turn an accepted item's pixels and arrays into tar member bytes."""
    if item.ok:
        try:
            item.members = encode_members(item.image, sample_json(item), item.arrays, jpeg_quality)
        except Exception as exc:  # noqa: BLE001 - one sample's encoding must not stop the unit
            item.fail(Status.ERROR, f"pack: {type(exc).__name__}: {exc}")
    item.image = None
    item.arrays = {}
    item.scratch = {}


def use_reserved_cpus(groups: list[list[Stage]]) -> None:
    """Hold OpenCV to the CPUs the process's stage groups reserved. Its own pool would start a
    thread per core of the machine, and those threads mostly spin: one process on the 2-core box
    took 7 % more CPU for no speed, CPU that the second worker needs (docs/benchmarks.md)."""
    import cv2

    cv2.setNumThreads(max(1, int(max(g[0].conf.num_cpus for g in groups))))


def run_group(stages: list[Stage], items: list[Item], last: bool, jpeg_quality: int) -> list[Item]:
    for stage in stages:
        stage.process(items)
    if last:
        for item in items:
            pack(item, jpeg_quality)
    return items


class LocalRunner:
    """Everything in this process, batch by batch: no Ray needed."""

    def __init__(self, stages: list[Stage], jpeg_quality: int) -> None:
        self.groups, self.jpeg_quality = stage_groups(stages), jpeg_quality
        use_reserved_cpus(self.groups)

    def run(self, items: list[Item]) -> Iterator[Item]:
        size = min(g[0].conf.batch_size for g in self.groups)
        for start in range(0, len(items), size):
            batch = items[start:start + size]
            for i, group in enumerate(self.groups):
                run_group(group, batch, i == len(self.groups) - 1, self.jpeg_quality)
            yield from batch


class _GroupWorker:
    """Ray Data actor: holds one group's models for its lifetime."""

    def __init__(self, stages: list[Stage], last: bool, jpeg_quality: int) -> None:
        self.stages, self.last, self.jpeg_quality = stages, last, jpeg_quality
        use_reserved_cpus([stages])

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [pickle.loads(b) for b in batch["item"]]
        run_group(self.stages, items, self.last, self.jpeg_quality)
        return {"unit": batch["unit"], "item": np.array([pickle.dumps(it) for it in items], dtype=object)}


def init_ray(workers: int) -> None:
    """``RAY_ADDRESS`` joins a cluster; otherwise a local Ray sized to ``workers`` CPUs."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "log_to_driver": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=workers, **kwargs)
    logging.getLogger("ray").setLevel(logging.ERROR)  # our own bar and summary say what matters


# Each block is one Ray task, which costs the driver, the raylet and the actor a few ms of CPU
# whatever its size: 64 inputs (about 2 s of CPU work) instead of one batch of 16 made a
# 2-worker build 6 % faster (docs/benchmarks.md).
MIN_BLOCK_ROWS = 64


class RayRunner:
    """Ray Data: one ``map_batches`` actor pool per stage group."""

    def __init__(self, stages: list[Stage], jpeg_quality: int, workers: int) -> None:
        self.groups, self.jpeg_quality, self.workers = stage_groups(stages), jpeg_quality, workers

    def run(self, items: list[Item]) -> Iterator[Item]:
        import ray.data

        init_ray(self.workers)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the build shows one bar of its own
        ctx.print_on_execution_start = False
        # Items come back in the order given, so units complete one after another and the sink
        # holds about one unit of packed samples, not any number of half-finished ones.
        ctx.execution_options.preserve_order = True
        rows = [{"unit": it.unit, "item": pickle.dumps(it)} for it in items]
        per_block = max(self.groups[0][0].conf.batch_size, MIN_BLOCK_ROWS)
        # Enough blocks to keep every worker busy; beyond that, blocks of at least MIN_BLOCK_ROWS.
        blocks = max(1, min(len(rows), max(4 * self.workers, len(rows) // per_block), 2000))
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        for i, group in enumerate(self.groups):
            conf = group[0].conf
            ds = ds.map_batches(_GroupWorker, fn_constructor_args=(group, i == len(self.groups) - 1,
                                                                   self.jpeg_quality),
                                batch_size=conf.batch_size, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=conf.concurrency or self.workers),
                                num_cpus=conf.num_cpus, num_gpus=conf.num_gpus)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for blob in batch["item"]:
                yield pickle.loads(blob)
