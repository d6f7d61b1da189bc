"""``make bench-gpu``: training step (Dense-Face vs full-UNet fine-tuning vs ControlNet, with
and without cached latents) and ETL model stages at full size on one GPU; skipped without
CUDA. The measurements live in `tests/bench/gpu_bench.py` (module docstring)."""
from __future__ import annotations

import pytest
import torch

from tests.bench.gpu_bench import FULL, report, stage_figures, train_step_figures

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
