"""ETL throughput on this machine, with baselines measured in the same run.

Run with ``make bench``. Prints images/s of: JPEG/PNG decode alone, mediapipe face mesh
alone (on pre-decoded source images), the CPU pipeline in one process, and the pipeline
on Ray with 1 and 2 workers; ratios are against the baselines of this very run.
"""
from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import ray
from PIL import Image

from denseface.annotators.landmarks import FaceMesh
from denseface.config import BuildConfig
from denseface.etl.build import build_dataset
from denseface.etl.readers import read_casia
from denseface.shards.reader import read_manifest

pytestmark = pytest.mark.bench
COPIES = 30


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sample_casia):
    """The sample's accepted photos, copied COPIES times (group photo left out)."""
    root = tmp_path_factory.mktemp("bench_src")
    photos = [r for r in read_casia(sample_casia) if r.identity != "group_photo"]
    for i in range(COPIES):
        for r in photos:
            dst = root / f"{r.identity}_{i:02d}" / r.rel.split("/")[-1]
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(r.source_path, dst)
    return root


def _rate(n: int, fn) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def test_etl_throughput(corpus, tmp_path):
    paths = sorted(p for p in corpus.rglob("*") if p.is_file())
    n = len(paths)
    decode = _rate(n, lambda: [np.asarray(Image.open(p).convert("RGB")) for p in paths])
    images = [np.ascontiguousarray(np.asarray(Image.open(p).convert("RGB"))) for p in paths]
    mesh = FaceMesh()
    mesh(images[0])  # warm-up outside the clock
    mesh_rate = _rate(n, lambda: [mesh(im) for im in images])

    def build(runner: str, workers: int, out: str) -> float:
        cfg = BuildConfig(sources=[f"casia:{corpus}"], out=tmp_path / out, runner=runner, workers=workers,
                          shard_size=32)
        res = build_dataset(cfg, progress=False)
        assert res.balanced and res.accepted == n
        return res.inputs / res.seconds

    local = build("local", 1, "local")
    ray1 = build("ray", 1, "ray1")
    ray.shutdown()
    ray2 = build("ray", 2, "ray2")
    ray.shutdown()
    both = 1.0 / (1.0 / decode + 1.0 / mesh_rate)  # the least any pipeline must do per image
    rows = [("decode alone (1 process)", decode, decode / mesh_rate),
            ("mediapipe face mesh alone (1 process)", mesh_rate, 1.0),
            ("decode + face mesh (1 process)", both, both / mesh_rate),
            ("pipeline, local runner (1 process)", local, local / mesh_rate),
            ("pipeline, Ray, 1 worker", ray1, ray1 / mesh_rate),
            ("pipeline, Ray, 2 workers", ray2, ray2 / mesh_rate)]
    print(f"\n{n} images ({COPIES} copies of the sample's single-face photos)")
    print(f"{'what':42s} {'images/s':>9s} {'x mesh alone':>13s}")
    for what, rate, ratio in rows:
        print(f"{what:42s} {rate:9.1f} {ratio:13.2f}")
    print(f"pipeline (local) / (decode + face mesh): {local / both:.2f}")
    print(f"Ray scaling 2 workers / 1 worker: {ray2 / ray1:.2f}; per core (2 workers): {ray2 / 2:.1f} images/s")
    stages = read_manifest(tmp_path / "local").filter(like="t_").mean()
    print("per-stage ms per image (local run, from the manifest):")
    for col, ms in stages.items():
        print(f"  {col[2:-3]:14s} {ms:8.2f}")
    busy = stages.sum()
    print(f"sum of stages {busy:.1f} ms vs wall {1000 / local:.1f} ms per image: "
          f"engine overhead {1000 / local / busy:.2f}x")
