"""Trainer throughput on this machine (tiny model, CPU), baselines measured in the same run.

Run with ``make bench`` (or ``.venv/bin/python -m pytest -q -m bench -s tests/bench/test_train_bench.py``).
Prints: data-pipeline samples/s in the main process and with 2 DataLoader workers (512 px
synthetic shards -> 64 px training tensors) against a raw tar read of the same shards, and the
time of one training step of the full Dense-Face model against plain UNet fine-tuning (all UNet
weights trained, eps loss only) on the same batch, with their ratio.
"""
from __future__ import annotations

import tarfile
import time

import pytest
import torch
import torch.nn.functional as F

from denseface.model.tiny_sd import build_tiny_sd
from denseface.train.config import TrainConfig
from denseface.train.data import make_loader, make_pipeline
from denseface.train.loop import Trainer
from denseface.train.synthetic import write_synthetic_dataset

pytestmark = pytest.mark.bench
BATCH = 12


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("train_bench") / "ds", identities=8, per_identity=12,
                                   shards=4)


def _samples_per_s(trainer: Trainer, workers: int, batches: int) -> float:
    pipe = make_pipeline(trainer.urls, trainer.transform(0.1), BATCH, num_workers=workers)
    it = iter(make_loader(pipe, workers))
    next(it)  # worker start-up and the first batch stay outside the clock
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * BATCH / (time.perf_counter() - start)
    del it
    return rate


def _raw_tar_samples_per_s(urls: list[str], rounds: int = 5) -> float:
    """The floor of any reader: every member's bytes read with tarfile, nothing decoded."""
    keys = 0
    start = time.perf_counter()
    for _ in range(rounds):
        for url in urls:
            with tarfile.open(url) as tar:
                for member in tar:
                    tar.extractfile(member).read()
                    keys += member.name.endswith(".json")
    return keys / (time.perf_counter() - start)


def _time(fn, n: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def test_train_throughput(dataset, tmp_path):
    trainer = Trainer(TrainConfig(data=[str(dataset)], output_dir=tmp_path / "run", id_index=tmp_path / "index",
                                  batch_size=BATCH, lr=1e-4, num_workers=2, tensorboard=False, progress=False,
                                  cpu=True))
    main_rate = _samples_per_s(trainer, 0, 8)
    worker_rate = _samples_per_s(trainer, 2, 16)
    raw_rate = _raw_tar_samples_per_s(trainer.urls)

    batch = trainer.to_device(next(iter(make_pipeline(trainer.urls, trainer.transform(0.1), BATCH))))
    dense_step = _time(lambda: trainer.train_step(batch), 10)

    sd = build_tiny_sd(0)  # plain fine-tuning: the whole UNet trains on the eps loss
    unet = sd.unet.train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def plain_step() -> None:
        latents = trainer.latents(batch, gen)
        text = trainer.encode_text(batch["caption"])
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, 1000, (BATCH,), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(unet(sd.scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=text).sample, noise)
        loss.backward()
        opt.step()

    plain = _time(plain_step, 10)
    n_new = sum(p.numel() for p in trainer.params)
    n_unet = sum(p.numel() for p in unet.parameters())
    print(f"\ntorch threads {torch.get_num_threads()}, batch {BATCH}, resolution {trainer.resolution}, "
          f"head {trainer.head_size}")
    print(f"data pipeline: {main_rate:8.1f} samples/s in-process, {worker_rate:8.1f} samples/s with 2 workers "
          f"(x{worker_rate / main_rate:.2f})")
    print(f"raw tar read of the same shards: {raw_rate:8.1f} samples/s; trainer pipeline (2 workers) / raw tar: "
          f"x{worker_rate / raw_rate:.3f}")
    print(f"train step:    Dense-Face {dense_step * 1e3:7.1f} ms ({n_new / 1e6:.2f} M trained params), "
          f"plain UNet fine-tuning {plain * 1e3:7.1f} ms ({n_unet / 1e6:.2f} M); ratio x{dense_step / plain:.2f}")
    print(f"steps/s the pipeline can feed with 2 workers: {worker_rate / BATCH:.1f}; the Dense-Face step needs "
          f"{1 / dense_step:.1f}")
    trainer.close()
    assert main_rate > 0 and worker_rate > 0 and dense_step > 0 and plain > 0
