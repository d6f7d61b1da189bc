"""``make bench-gpu``: training step (Dense-Face vs full-UNet fine-tuning vs ControlNet, with
and without cached latents), ETL model stages at full size and the paper preset's whole
pipeline on Ray Data, on one GPU; skipped without CUDA. The measurements live in
`tests/bench/gpu_bench.py` and `tests/bench/gpu_pipeline.py` (module docstrings)."""
from __future__ import annotations

import os

import pytest
import torch

from tests.bench.gpu_bench import FULL, free_memory, report, stage_figures, train_step_figures
from tests.bench.gpu_pipeline import pipeline_figures, pipeline_report

pytestmark = [pytest.mark.bench, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from denseface.train.synthetic import write_synthetic_dataset

    return str(write_synthetic_dataset(tmp_path_factory.mktemp("gpu_bench") / "ds", identities=2,
                                       per_identity=FULL.batch // 2, shards=1))


def test_gpu_training_step_and_stages(dataset, tmp_path):
    train = train_step_figures(FULL, dataset, tmp_path)
    stages = stage_figures(FULL, tmp_path)
    print("\n" + report(FULL, train, stages))
    assert all(f["ms"] > 0 for f in train.values()) and all(rate > 0 for rate in stages.values())


def test_gpu_paper_pipeline_on_ray(tmp_path):
    """256 CASIA-sized inputs in units of 32: start-up (Ray, models loading) plus about six
    units of steady state, within the call's minutes."""
    free_memory()
    workers = min(8, os.cpu_count() or 1)
    fig = pipeline_figures(tmp_path, full_size=True, images=256, shard_size=32, workers=workers, device="cuda",
                           skip=2)
    print("\n" + pipeline_report(fig, torch.cuda.get_device_name(), workers))
    assert fig["accepted"] > 0 and fig["whole_per_s"] > 0
