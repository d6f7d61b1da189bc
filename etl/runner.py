"""Executing stage groups over units: in-process (debugging, tests) or on Ray Data.

Both runners run the same stage objects; Ray only adds the distribution. The unit of work is
a unit (a shard's inputs), and the process that runs the last stage group writes it
(`etl.unit_writer`): the driver sends item stubs out and gets each unit's stats back, never
sample bytes.
"""
from __future__ import annotations

import logging
import math
import os
import pickle
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from denseface.annotators.base import Item, Stage
from denseface.errors import ConfigError
from denseface.etl.stages import stage_groups
from denseface.etl.unit_writer import UnitWriter

Progress = Callable[[int], Any]  # called with the number of inputs just finished


@dataclass
class UnitJob:
    """One unit's items on their way through the stage groups."""

    index: int
    fingerprint: str
    items: list[Item]


def use_reserved_cpus(num_cpus: float) -> None:
    """Hold OpenCV to the CPUs the process's stage groups reserved. Its own pool would start a
    thread per core of the machine, and those threads mostly spin: one process on the 2-core box
    took 7 % more CPU for no speed, CPU that the second worker needs (docs/benchmarks.md)."""
    import cv2

    cv2.setNumThreads(max(1, int(num_cpus)))


def run_batches(groups: list[list[Stage]], items: list[Item], size: int, writer: UnitWriter | None,
                progress: Progress | None = None) -> None:
    """The groups over ``items`` in batches of ``size``; with the writer (the last group runs
    here), each batch is packed as soon as its stages are done, which drops its pixels."""
    for start in range(0, len(items), size):
        batch = items[start:start + size]
        for stages in groups:
            for stage in stages:
                stage.process(batch)
        if writer is not None:
            for item in batch:
                writer.pack(item)
        if progress is not None:
            progress(len(batch))


class LocalRunner:
    """Everything in this process, unit by unit: no Ray needed."""

    def __init__(self, stages: list[Stage], writer: UnitWriter) -> None:
        self.groups, self.writer = stage_groups(stages), writer
        use_reserved_cpus(max(g[0].conf.num_cpus for g in self.groups))

    def run(self, jobs: list[UnitJob], progress: Progress) -> Iterator[dict[str, Any]]:
        """Each unit's stats, once it is written."""
        size = min(g[0].conf.batch_size for g in self.groups)
        for job in jobs:
            run_batches(self.groups, job.items, size, self.writer, progress)
            yield self.writer.write(job.index, job.fingerprint, job.items)


class _GroupWorker:
    """Ray Data actor: holds one group's models for its lifetime; the last group's also writes."""

    def __init__(self, stages: list[Stage], writer: UnitWriter | None) -> None:
        self.stages, self.writer = stages, writer
        use_reserved_cpus(stages[0].conf.num_cpus)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"unit": np.array([pickle.dumps(self._one(pickle.loads(b))) for b in batch["unit"]], dtype=object)}

    def _one(self, job: UnitJob) -> UnitJob | dict[str, Any] | OSError:
        run_batches([self.stages], job.items, self.stages[0].conf.batch_size, self.writer)
        if self.writer is None:
            return job
        try:
            return self.writer.write(job.index, job.fingerprint, job.items)
        except OSError as exc:  # the driver raises it as the build's own (a full disk is the user's to fix)
            return exc


def pool_sizes(groups: list[list[Stage]], workers: int, units: int, gpus: float | None) -> list[int]:
    """Actors per stage group. Ray Data starts every group's pool before work flows, and a pool
    that cannot be placed waits for resources the pools upstream hold: the build can hang
    (docs/benchmarks.md, "Ray stage-group pools"). So GPU groups without a ``concurrency`` get as
    many replicas as ``gpus`` hold (a replica is one actor of each such group; at most
    ``workers``), and a GPU demand that cannot be met is a config error before any work.
    ``gpus`` None: a cluster whose autoscaler may add GPUs, so the pools are left as asked."""
    sizes = [min(g[0].conf.concurrency or workers, units) for g in groups]
    if gpus is None:
        return sizes
    auto = [i for i, g in enumerate(groups) if g[0].conf.num_gpus > 0 and g[0].conf.concurrency is None]
    if auto:
        one = [1 if i in auto else n for i, n in enumerate(sizes)]  # one replica beside the fixed pools
        fixed = gpu_demand(groups, [0 if i in auto else n for i, n in enumerate(sizes)])
        fit = int((gpus - fixed) / (gpu_demand(groups, one) - fixed) + 1e-9)
        if fit < 1:
            raise ConfigError(f"the GPU stages need {_count(gpu_demand(groups, one), 'GPU')} "
                              f"({_gpu_use(groups, one)}), Ray sees {gpus:g}: lower their num_gpus (a fraction "
                              "shares a GPU) or build with --runner local")
        sizes = [min(n, fit) if i in auto else n for i, n in enumerate(sizes)]
    if gpu_demand(groups, sizes) > gpus + 1e-9:
        raise ConfigError(f"the GPU stages need {_count(gpu_demand(groups, sizes), 'GPU')} at once "
                          f"({_gpu_use(groups, sizes)}), Ray sees {gpus:g}: lower their concurrency or num_gpus")
    return sizes


def gpu_demand(groups: list[list[Stage]], sizes: list[int]) -> float:
    return sum(n * g[0].conf.num_gpus for n, g in zip(sizes, groups))


def cpu_demand(groups: list[list[Stage]], sizes: list[int]) -> float:
    return sum(n * g[0].conf.num_cpus for n, g in zip(sizes, groups))


def _count(n: float, what: str) -> str:
    return f"{n:g} {what}" + ("" if n == 1 else "s")


def _gpu_use(groups: list[list[Stage]], sizes: list[int]) -> str:
    """What each GPU group asks for: "restore 1 x 0.5, head_pose+identity 1 x 0.25"."""
    return ", ".join(f"{'+'.join(s.name for s in g)} {n} x {g[0].conf.num_gpus:g}"
                     for n, g in zip(sizes, groups) if g[0].conf.num_gpus > 0)


def init_ray(num_cpus: float) -> None:
    """``RAY_ADDRESS`` joins a cluster; otherwise a local Ray with ``num_cpus`` CPU slots, enough
    for every group's actors at once (`pool_sizes`: the OS shares the cores between them)."""
    import ray

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR,
                              "log_to_driver": False}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(num_cpus=max(1, math.ceil(num_cpus)), **kwargs)
    logging.getLogger("ray").setLevel(logging.ERROR)  # our own bar and summary say what matters


class RayRunner:
    """Ray Data: one ``map_batches`` actor pool per stage group, one unit per row and per task.

    A row is never split, so every group sees whole units and the last one can write them; a
    unit's task is seconds of work, so Ray's fixed cost per task does not count. Between groups
    (the paper preset's GPU stages) a unit's pixels travel as one object: shard size × about
    1 MB.
    """

    def __init__(self, stages: list[Stage], writer: UnitWriter, workers: int) -> None:
        self.groups, self.writer, self.workers = stage_groups(stages), writer, workers
        self._noted = False  # the cluster note is said once, not once per wave

    def _pool_sizes(self, units: int) -> list[int]:
        """`pool_sizes` against what Ray has. A local Ray gets no more, so a shortfall is an error;
        a cluster (``RAY_ADDRESS``) may be growing, so it is a note, said once."""
        import ray

        have, cluster = ray.cluster_resources(), bool(os.environ.get("RAY_ADDRESS"))
        sizes = pool_sizes(self.groups, self.workers, units, None if cluster else have.get("GPU", 0.0))
        need = {"CPU": cpu_demand(self.groups, sizes), "GPU": gpu_demand(self.groups, sizes)}
        short = [k for k, v in need.items() if v > have.get(k, 0.0) + 1e-9]
        if not short:
            return sizes
        asked = " and ".join(_count(need[k], k) for k in short)
        has = " and ".join(f"{have.get(k, 0.0):g}" for k in short)
        if not cluster:
            raise ConfigError(f"the stage groups' actors need {asked} at once, Ray has {has}: lower --workers "
                              "or the stages' concurrency")
        if not self._noted:
            print(f"note: the stage groups' actors need {asked} at once, the cluster has {has} now: the build "
                  "starts once the autoscaler has added them (a cluster that cannot grow that far waits for "
                  "ever: set the stages' concurrency)", file=sys.stderr)
            self._noted = True
        return sizes

    def run(self, jobs: list[UnitJob], progress: Progress) -> Iterator[dict[str, Any]]:
        """Each unit's stats, in the order the workers finish them."""
        import ray.data

        if not jobs:
            return
        # CPU slots for every pool as asked: an upper bound, since GPU groups may get fewer actors
        init_ray(cpu_demand(self.groups, pool_sizes(self.groups, self.workers, len(jobs), None)))
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # Ray Data sets up its own logger on import
        sizes = self._pool_sizes(len(jobs))
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the build shows one bar of its own
        ctx.print_on_execution_start = False
        ds = ray.data.from_items([{"unit": pickle.dumps(job)} for job in jobs], override_num_blocks=len(jobs))
        for i, (group, actors) in enumerate(zip(self.groups, sizes)):
            conf = group[0].conf
            writer = self.writer if i == len(self.groups) - 1 else None
            ds = ds.map_batches(_GroupWorker, fn_constructor_args=(group, writer), batch_size=1,
                                batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=actors),
                                num_cpus=conf.num_cpus, num_gpus=conf.num_gpus)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for blob in batch["unit"]:
                stats = pickle.loads(blob)
                if isinstance(stats, OSError):
                    raise stats
                progress(stats["n_inputs"])
                yield stats
