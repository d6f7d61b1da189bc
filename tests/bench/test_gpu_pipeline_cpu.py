"""`make bench-gpu`'s whole-pipeline measurement runs on the CPU: the paper preset with tiny
random models in every stage's own format, on Ray Data with one GPU that Ray counts but the
machine lacks (the stages fall back to the CPU; the figures mean nothing here)."""
from __future__ import annotations

import json

import pytest

from denseface.shards.manifest import read_manifest
from tests.bench.gpu_pipeline import pipeline_figures, pipeline_report

pytestmark = pytest.mark.ray


def test_paper_pipeline_on_ray_with_one_gpu_runs_with_tiny_models(tmp_path):
    import ray

    # 2 CPU groups x 1 worker + 4 GPU groups x 1 replica, each actor one CPU slot
    ray.init(num_cpus=6, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        fig = pipeline_figures(tmp_path, full_size=False, images=4, shard_size=2, workers=1, device="cpu", skip=0)
    finally:
        ray.shutdown()
    assert (fig["images"], fig["accepted"]) == (4, 4)
    # the paper preset's GPU shares, whose groups (head pose and identity run as one) fill one GPU
    assert fig["num_gpus"] == {"restore": 0.25, "head_pose": 0.125, "identity": 0.125, "latent": 0.125,
                               "captions": 0.5}
    assert fig["whole_per_s"] > 0 and (fig["steady_per_s"] is None or fig["steady_per_s"] > 0)
    assert {"restore", "latent", "head_pose", "identity", "captions"} <= set(fig["ms_per_image"])
    rows = read_manifest(tmp_path / "out")
    assert (rows["status"] == "ok").all()
    captioners = {c["captioner"] for text in rows["captions_all"] for c in json.loads(text)}
    assert len(captioners) == 6  # every captioner of the preset ran, on the models' own folders
    text = pipeline_report(fig, "CPU", 1)
    assert "GPU utilisation" in text and "GPU-hours to annotate 2 M images" in text
