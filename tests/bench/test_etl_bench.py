"""ETL throughput on this machine, with baselines measured in the same run.

Run with ``make bench``. Prints images/s of: JPEG/PNG decode alone, mediapipe face mesh
alone (on pre-decoded source images), the CPU pipeline in one process, and the pipeline
on Ray with 1 and 2 workers; ratios are against the baselines of this very run. Two corpora:
the sample's photos as they are (up to 2333 px), and CASIA-sized ones (250x250 JPEG, the
face in the middle as in CASIA-WebFace, cut from the same photos). On the CASIA-sized corpus
the local run is timed with both identity engines (dlib's own network, and its weights in
torch, the default), so the per-stage table shows before and after.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from PIL import Image

from denseface.annotators.landmarks import FaceMesh
from denseface.config import BuildConfig, StageConfig
from denseface.etl.build import build_dataset
from denseface.etl.readers import read_casia
from denseface.shards.manifest import read_manifest
from tests.bench.casia_corpus import casia_sized

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


@pytest.fixture(scope="module")
def casia_corpus(corpus, tmp_path_factory):
    """`corpus` in CASIA-WebFace's format (`casia_corpus.casia_sized`)."""
    return casia_sized(sorted(q for q in corpus.rglob("*") if q.is_file()), tmp_path_factory.mktemp("bench_casia"))


def _rate(n: int, fn) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def _build(corpus: Path, out: Path, runner: str, workers: int, engine: str = "torch"):
    cfg = BuildConfig(sources=[f"casia:{corpus}"], out=out, runner=runner, workers=workers, shard_size=32,
                      stages={"identity": StageConfig(backend="dlib", options={"engine": engine})})
    res = build_dataset(cfg, progress=False)
    if runner == "ray":
        ray.shutdown()
    return res


def _throughput(corpus: Path, tmp_path: Path, engines: tuple[str, ...]) -> None:
    paths = sorted(p for p in corpus.rglob("*") if p.is_file())
    n = len(paths)
    decode = _rate(n, lambda: [np.asarray(Image.open(p).convert("RGB")) for p in paths])
    images = [np.ascontiguousarray(np.asarray(Image.open(p).convert("RGB"))) for p in paths]
    mesh = FaceMesh()
    mesh(images[0])  # warm-up outside the clock
    mesh_rate = _rate(n, lambda: [mesh(im) for im in images])

    def build(runner: str, workers: int, engine: str = "torch") -> float:
        res = _build(corpus, tmp_path / f"{runner}{workers}{engine}", runner, workers, engine)
        assert res.balanced and res.accepted == n, (res.accepted, n)
        return res.inputs / res.seconds

    local = {e: build("local", 1, e) for e in engines}
    ray1, ray2 = build("ray", 1), build("ray", 2)
    both = 1.0 / (1.0 / decode + 1.0 / mesh_rate)  # the least any pipeline must do per image
    rows = [("decode alone (1 process)", decode), ("mediapipe face mesh alone (1 process)", mesh_rate),
            ("decode + face mesh (1 process)", both)]
    rows += [(f"pipeline, local runner (1 process), id {e}", rate) for e, rate in local.items()]
    rows += [("pipeline, Ray, 1 worker", ray1), ("pipeline, Ray, 2 workers", ray2)]
    print(f"\n{corpus.name}: {n} images ({COPIES} copies of the sample's single-face photos)")
    print(f"{'what':48s} {'images/s':>9s} {'x mesh alone':>13s}")
    for what, rate in rows:
        print(f"{what:48s} {rate:9.1f} {rate / mesh_rate:13.2f}")
    print(f"pipeline (local, torch) / (decode + face mesh): {local['torch'] / both:.2f}")
    print(f"Ray 2 workers / 1 worker: {ray2 / ray1:.2f}, start-up (~10 s) included: on {n} images it is most of "
          "the build; the scaling is measured by tests/bench/ray_scaling.py")
    tables = {e: read_manifest(tmp_path / f"local1{e}").filter(regex=r"^t_\w+_ms$").mean() for e in engines}
    print("per-stage ms per image (local runs, from the manifest): " + " | ".join(f"id {e}" for e in engines))
    for col in tables["torch"].index:
        print(f"  {col[2:-3]:14s} " + " ".join(f"{tables[e][col]:8.2f}" for e in engines))
    busy = tables["torch"].sum()
    print(f"sum of stages {busy:.1f} ms vs wall {1000 / local['torch']:.1f} ms per image: "
          f"engine overhead {1000 / local['torch'] / busy:.2f}x")


def test_etl_throughput(corpus, tmp_path):
    _throughput(corpus, tmp_path, ("torch",))


def test_etl_throughput_casia_sized(casia_corpus, tmp_path):
    _throughput(casia_corpus, tmp_path, ("dlib", "torch"))
