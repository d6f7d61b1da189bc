"""`make bench-gpu`'s measurements run on the CPU with tiny shapes: the command works before a
GPU is lent (the figures themselves mean nothing here)."""
from __future__ import annotations

import math

from tests.bench.gpu_bench import TINY, report, stage_figures, train_step_figures


def test_gpu_bench_code_runs_on_cpu_with_tiny_shapes(tmp_path):
    from denseface.train.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "ds", identities=2, per_identity=1, shards=1)
    train = train_step_figures(TINY, str(data), tmp_path)
    assert set(train) == {"Dense-Face", "Dense-Face, cached latents", "full-UNet fine-tuning",
                          "ControlNet (frozen UNet)"}
    assert all(f["ms"] > 0 and f["trained_m"] > 0 and math.isnan(f["peak_gib"]) for f in train.values())
    # the peers train what they should: ControlNet about half a UNet, full fine-tuning all of it
    assert train["ControlNet (frozen UNet)"]["trained_m"] < train["full-UNet fine-tuning"]["trained_m"]
    stages = stage_figures(TINY)
    assert set(stages) == {"CodeFormer", "Hopenet (ResNet-50)", "ArcFace IR-SE50 (torch)",
                           "dlib face ResNet (torch)"}
    assert all(rate > 0 for rate in stages.values())
    text = report(TINY, train, stages)
    assert "x ControlNet" in text and "CPU" in text
