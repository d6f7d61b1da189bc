"""Runners take units and give back each unit's stats once the unit is written. On Ray the
worker that runs the last stage group writes it (the driver gets no sample bytes), and a write
that fails there is raised in the driver as the same OSError. Each worker process runs OpenCV on
the CPUs its stage group reserved, not on every core of the machine. Every stage group's actors
are placed at once (Ray Data hangs otherwise), GPU groups sized to the GPUs there are."""
from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from denseface.annotators.base import Item, Reject, Stage
from denseface.config import BuildConfig, StageConfig
from denseface.errors import ConfigError
from denseface.etl.runner import LocalRunner, RayRunner, UnitJob, _GroupWorker, pool_sizes
from denseface.etl.unit_writer import UnitWriter
from denseface.shards.schema import manifest_schema
from denseface.shards.writer import unit_paths


class _Delay(Stage):
    """Sleeps as long as the item says, then rejects it (nothing to encode)."""

    name = "delay"

    def process_one(self, item: Item) -> None:
        time.sleep(item.fields["delay"])
        raise Reject("done")


@dataclass(frozen=True)
class _PidWriter(UnitWriter):
    """Says in the stats which process wrote the unit."""

    def write(self, unit: int, fingerprint: str, items: list[Item]) -> dict[str, Any]:
        return {**super().write(unit, fingerprint, items), "pid": os.getpid()}


def _writer(root: Path) -> _PidWriter:
    return _PidWriter(root, ("delay",), manifest_schema({}, ["delay"]), "fp", 95)


def _jobs(units: int, per_unit: int) -> list[UnitJob]:
    return [UnitJob(u, f"fp{u}", [Item(key=f"k{u}-{i}", identity="x", source="test", source_path=f"/x/{u}/{i}",
                                       unit=u, fields={"delay": 0.0}) for i in range(per_unit)])
            for u in range(units)]


def _run(runner, jobs: list[UnitJob]) -> tuple[list[dict[str, Any]], list[int]]:
    done: list[int] = []
    return list(runner.run(jobs, done.append)), done


@pytest.mark.ray
def test_ray_workers_write_the_units_and_return_their_stats(tmp_path):
    import ray

    stage = _Delay(BuildConfig(), StageConfig(batch_size=2))
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "manifest").write_text("a file where the manifest folder goes")
    try:
        stats, done = _run(RayRunner([stage], _writer(tmp_path / "out"), workers=2), _jobs(4, 3))
        with pytest.raises(OSError) as raised:
            _run(RayRunner([stage], _writer(blocked), workers=2), _jobs(1, 3))
    finally:
        ray.shutdown()
    assert sorted(s["unit"] for s in stats) == [0, 1, 2, 3] and done == [3] * 4
    assert all(s["pid"] != os.getpid() and s["n_rejected"] == 3 for s in stats)  # written in the workers
    assert all(unit_paths(tmp_path / "out", u)["stats"].is_file() for u in range(4))
    assert raised.value.errno in (errno.EEXIST, errno.ENOTDIR)


def test_local_runner_writes_each_unit_and_reports_every_batch(tmp_path):
    runner = LocalRunner([_Delay(BuildConfig(), StageConfig(batch_size=2))], _writer(tmp_path))
    stats, done = _run(runner, _jobs(2, 3))
    assert [s["unit"] for s in stats] == [0, 1] and done == [2, 1, 2, 1]
    assert all(s["pid"] == os.getpid() for s in stats)
    assert all(unit_paths(tmp_path, u)["manifest"].is_file() for u in range(2))


def test_workers_hold_opencv_to_their_reserved_cpus(tmp_path):
    import cv2

    before = cv2.getNumThreads()
    try:
        for cpus in (2.0, 1.0):
            _GroupWorker([_Delay(BuildConfig(), StageConfig(num_cpus=cpus))], writer=None)
            assert cv2.getNumThreads() == int(cpus)
        cv2.setNumThreads(before)
        LocalRunner([_Delay(BuildConfig(), StageConfig(num_cpus=0.5))], _writer(tmp_path))
        assert cv2.getNumThreads() == 1  # a fraction of a CPU is still one thread
    finally:
        cv2.setNumThreads(before)


def _groups(*confs: StageConfig) -> list[list[Stage]]:
    return [[_Delay(BuildConfig(), conf)] for conf in confs]


def test_gpu_groups_get_as_many_replicas_as_the_gpus_hold():
    # the paper preset's shape: two CPU groups and GPU groups whose fractions add up to one GPU
    cpu, gpu = StageConfig(), [StageConfig(num_gpus=f) for f in (0.25, 0.125, 0.125, 0.5)]
    groups = _groups(cpu, gpu[0], gpu[1], cpu, gpu[2], gpu[3])
    assert pool_sizes(groups, workers=16, units=64, gpus=1) == [16, 1, 1, 16, 1, 1]
    assert pool_sizes(groups, workers=16, units=64, gpus=8) == [16, 8, 8, 16, 8, 8]
    assert pool_sizes(groups, workers=16, units=3, gpus=8) == [3, 3, 3, 3, 3, 3]  # no actor without a unit
    assert pool_sizes(groups, workers=4, units=64, gpus=8) == [4] * 6  # replicas stay within --workers
    assert pool_sizes(groups, workers=16, units=64, gpus=2.5) == [16, 2, 2, 16, 2, 2]
    with pytest.raises(ConfigError, match=r"need 1 GPU \(.*delay 1 x 0.25.*Ray sees 0") as err:
        pool_sizes(groups, workers=2, units=8, gpus=0)
    assert "--runner local" in str(err.value)


def test_gpu_groups_with_a_concurrency_keep_it_or_fail():
    fixed, auto = StageConfig(num_gpus=0.5, concurrency=2), StageConfig(num_gpus=0.25)
    assert pool_sizes(_groups(fixed, auto), workers=8, units=8, gpus=2) == [2, 4]
    with pytest.raises(ConfigError, match="need 1.25 GPUs"):  # the fixed pool leaves no room for a replica
        pool_sizes(_groups(fixed, auto), workers=8, units=8, gpus=1)
    with pytest.raises(ConfigError, match=r"need 1 GPU at once \(delay 2 x 0.5\), Ray sees 0.5"):
        pool_sizes(_groups(fixed), workers=8, units=8, gpus=0.5)
    # a cluster whose autoscaler may add GPUs: the pools as asked
    assert pool_sizes(_groups(fixed, auto), workers=8, units=6, gpus=None) == [2, 6]


class _Alarm(Exception):
    pass


def _raise_alarm(signum, frame):
    raise _Alarm("Ray Data hung: the stage groups' actors could not all be placed")


@pytest.mark.ray
def test_ray_runs_groups_that_would_not_fit_at_full_size(tmp_path, monkeypatch, capsys):
    """Two GPU groups of 2 x 0.5 GPU on one (Ray's own resource count; nothing runs on a GPU) run
    one actor each, all pools at once; pools that did not fit made real builds hang at times."""
    import ray

    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    groups = _groups(StageConfig(batch_size=2), StageConfig(num_gpus=0.5, num_cpus=0.5),
                     StageConfig(num_gpus=0.5, num_cpus=0.5, batch_size=3))  # not one group with the one before
    before = signal.signal(signal.SIGALRM, _raise_alarm)
    signal.alarm(120)
    try:
        stats, done = _run(RayRunner([g[0] for g in groups], _writer(tmp_path), workers=2), _jobs(6, 2))
        with pytest.raises(ConfigError, match="need 5 CPUs at once, Ray has 4"):
            _run(RayRunner([g[0] for g in groups], _writer(tmp_path), workers=4), _jobs(6, 2))
        monkeypatch.setenv("RAY_ADDRESS", "auto")  # a cluster: it may grow, so the pools stay as asked
        on_cluster = RayRunner([g[0] for g in groups], _writer(tmp_path), workers=4)
        assert on_cluster._pool_sizes(6) == on_cluster._pool_sizes(6) == [4, 4, 4]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
        ray.shutdown()
    assert sorted(s["unit"] for s in stats) == list(range(6)) and done == [2] * 6
    assert len({s["pid"] for s in stats}) == 1  # the last group, a GPU one, had one actor, not --workers
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert notes == ["note: the stage groups' actors need 8 CPUs and 4 GPUs at once, the cluster has 4 and 1 "
                     "now: the build starts once the autoscaler has added them (a cluster that cannot grow that "
                     "far waits for ever: set the stages' concurrency)"]  # once, not per wave
