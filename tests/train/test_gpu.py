"""GPU checks of the trainer; skipped without CUDA.

Why: the CPU tests run the tiny model in fp32. These run the CUDA path: mixed precision
(frozen SD in bf16/fp16, new modules in fp32, fp16 with the grad scaler), gradient
checkpointing, DataLoader workers feeding a GPU, and one SD-2.1-shaped model (random
weights, 865 M-parameter UNet) at 512 px with heatmaps rendered on the device, printing step
time and peak memory. ``DENSEFACE_TRAIN_DATA`` may name a prebuilt synthetic dataset (one
without it is written here, which needs mediapipe).
"""
from __future__ import annotations

import os
import time

import pytest
import torch

from denseface.model.tiny_sd import build_random_sd21

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each test picks its own mixed precision; accelerate keeps one process-wide state."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    if os.environ.get("DENSEFACE_TRAIN_DATA"):
        return os.environ["DENSEFACE_TRAIN_DATA"]
    from denseface.train.synthetic import write_synthetic_dataset

    return str(write_synthetic_dataset(tmp_path_factory.mktemp("gpu") / "ds", identities=4, per_identity=6, shards=2))


def _cfg(dataset, tmp_path, **kw):
    from denseface.train.config import TrainConfig

    base = dict(data=[dataset], output_dir=tmp_path / "run", id_index=tmp_path / "index", steps=30, batch_size=4,
                lr=1e-3, num_workers=2, log_every=10, checkpoint_every=1000, validate_every=1000,
                tensorboard=False, progress=False)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_tiny_model_trains_on_gpu(dataset, tmp_path, precision):
    from denseface.train.loop import Trainer

    trainer = Trainer(_cfg(dataset, tmp_path, mixed_precision=precision, gradient_checkpointing=True))
    assert trainer.accelerator.device.type == "cuda"
    assert trainer.sd.unet.dtype == trainer.sd.text_encoder.dtype == trainer.weight_dtype != torch.float32
    assert all(p.dtype == torch.float32 for p in trainer.params)
    result = trainer.train()
    first, last = result.window_means(5)
    print(f"\n{precision}: total {first['total']:.4f} -> {last['total']:.4f}")
    assert all(torch.isfinite(torch.tensor(v)).all() for v in result.losses.values())
    assert last["total"] < first["total"]


def test_resume_on_gpu(dataset, tmp_path):
    """Reported, and held to a loose bound: CUDA kernels need not be bitwise deterministic."""
    from denseface.train.loop import train

    kw = dict(steps=8, checkpoint_every=4, mixed_precision="bf16")
    full = train(_cfg(dataset, tmp_path / "a", **kw))
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    resumed = train(_cfg(dataset, tmp_path / "b", resume=str(tmp_path / "a" / "run" / "checkpoints" / "step-000004"),
                         **kw))
    diff = max(abs(a - b) for a, b in zip(full.losses["total"][4:], resumed.losses["total"]))
    print(f"\nGPU resume: max |loss difference| over steps 5..8 = {diff:.3g}")
    assert diff < 1e-2


@pytest.mark.parametrize("checkpointing", [False, True])
def test_sd21_shaped_steps_at_512(dataset, tmp_path, checkpointing):
    from denseface.train.loop import Trainer

    trainer = Trainer(_cfg(dataset, tmp_path, batch_size=4, lr=5e-6, gradient_checkpointing=checkpointing,
                           resolution=512), sd=build_random_sd21("cuda"))
    assert trainer.resolution == 512 and trainer.head_size == 64 and not trainer.heatmaps_in_loader
    it = iter(trainer.train_loader())
    batch = next(it)
    assert tuple(batch["pose_image"].shape) == (4, 3, 512, 512) and "heatmaps" not in batch
    trainer.train_step(batch)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(3):
        b = next(it)
        t0 = time.perf_counter()
        terms = trainer.train_step(b)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        assert all(torch.isfinite(v) for v in terms.values())
    model = trainer.dense_face
    assert all(p.grad is None for p in model.unet.parameters())
    assert all(p.grad is not None for p in trainer.params)
    n = sum(p.numel() for p in trainer.params) / 1e6
    print(f"\nSD-2.1-shaped, 512 px, batch 4, {trainer.accelerator.mixed_precision}, checkpointing={checkpointing}: "
          f"{min(times) * 1e3:.0f} ms/step, peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB, "
          f"{n:.0f} M trained params, terms " + ", ".join(f"{k} {float(v):.3f}" for k, v in terms.items()))
    del it
