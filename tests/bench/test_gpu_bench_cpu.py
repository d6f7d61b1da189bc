"""`make bench-gpu`'s measurements run on the CPU with tiny shapes: the command works before a
GPU is lent (the figures themselves mean nothing here)."""
from __future__ import annotations

import math

import pytest

from tests.bench.gpu_bench import TINY, gpu_hours, report, stage_figures, train_step_figures


def test_gpu_bench_code_runs_on_cpu_with_tiny_shapes(tmp_path):
    from denseface.train.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "ds", identities=2, per_identity=1, shards=1)
    train = train_step_figures(TINY, str(data), tmp_path)
    assert set(train) == {"Dense-Face", "Dense-Face, cached latents", "full-UNet fine-tuning",
                          "ControlNet (frozen UNet)"}
    assert all(f["ms"] > 0 and f["trained_m"] > 0 and math.isnan(f["peak_gib"]) for f in train.values())
    # the peers train what they should: ControlNet about half a UNet, full fine-tuning all of it
    assert train["ControlNet (frozen UNet)"]["trained_m"] < train["full-UNet fine-tuning"]["trained_m"]
    stages = stage_figures(TINY, tmp_path)
    from tests.bench.annotation_models import CAPTIONERS

    assert {"CodeFormer", "Hopenet (ResNet-50)", "ArcFace IR-SE50 (torch)", "dlib face ResNet (torch)",
            "VAE encoder (latent stage, 64 px, fp32)", "ArcFace R50 (ONNX, CPU)",
            "CLIP scoring (clip-vit-large-patch14, 6 captions)"} <= set(stages)
    assert {f"caption {name}" for name in CAPTIONERS} <= set(stages) and len(stages) == 7 + len(CAPTIONERS)
    assert all(rate > 0 for rate in stages.values())
    hours, summed = gpu_hours(stages, "cpu", images=3600)
    assert "ArcFace R50 (ONNX, CPU)" in summed and len(summed) == len(stages) - 2
    assert hours == pytest.approx(sum(1 / stages[s] for s in summed))
    # on a GPU whose onnxruntime has no CUDA provider, the torch IR-SE50 stands for the identity stage
    on_gpu = gpu_hours(stages, "cuda", images=3600)[1]
    assert "ArcFace IR-SE50 (torch)" in on_gpu and "ArcFace R50 (ONNX, CPU)" not in on_gpu
    text = report(TINY, train, stages)
    assert "x ControlNet" in text and "CPU-hours to annotate 2 M images" in text


def test_published_size_configs_build():
    """The full-size configs only run on a GPU: build them on the meta device (no memory) here, so
    a config mistake shows before a GPU is lent; sizes as the hub ids state them (BLIP without the
    tied output layer the hub files store twice)."""
    import torch

    from tests.bench.annotation_models import PUBLISHED, build, image_size

    params = {}
    for name in PUBLISHED:
        model = build(name, True, "meta", torch.float16)
        params[name] = sum(p.numel() for p in model.parameters()) / 1e6
        assert image_size(model) in (224, 384)
    assert params["blip2-opt-2.7b"] == pytest.approx(3745, rel=0.01)  # "3.74B params"
    assert params["clip-vit-large-patch14"] == pytest.approx(428, rel=0.01)
    assert params["vit-gpt2"] == pytest.approx(239, rel=0.01)
    assert params["blip-large"] + 23.4 == pytest.approx(470, rel=0.01)


def test_bench_times_the_paper_presets_caption_and_identity_models():
    """The bench's random-weight builds copy the very hub ids the paper preset annotates with."""
    import yaml

    from denseface.config import PRESETS_DIR
    from tests.bench.annotation_models import CAPTIONERS, CLIP, PUBLISHED

    stages = yaml.safe_load((PRESETS_DIR / "paper.yaml").read_text())["stages"]
    options = stages["captions"]["options"]
    assert {c["name"]: c["path"] for c in options["captioners"]} == {n: PUBLISHED[n][3] for n in CAPTIONERS}
    assert options["clip"] == PUBLISHED[CLIP][3]
    assert stages["identity"]["backend"] == "arcface" and stages["identity"]["weights"].endswith("w600k_r50.onnx")
