"""Two-process training on CPU (gloo), launched as `make train NPROC=2` launches it.

Checked: the processes form one DDP group (not two independent runs); over an epoch every
sample is seen exactly once across the ranks; the trained parameters are identical on both
ranks; the logged loss (the mean over ranks) equals a single-process run over the same global
batch (both ranks' batches and noise, gradients averaged) within rtol 1e-4; and a 2-process
run resumed from its step-2 checkpoint repeats the uninterrupted run's losses.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from denseface.train.config import TrainConfig
from denseface.train.data import make_pipeline
from denseface.train.loop import Trainer
from denseface.train.stream import seed_of
from denseface.train.synthetic import write_synthetic_dataset

WORLD = 2
STEPS = 4
SMALL = dict(id_hidden=64, head_hidden=16, pose_embed_channels=(8, 16, 16, 32))
LAUNCH = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", str(WORLD),
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """The 2-process launch: dataset of 2 identities x 4 images over 4 shards (2 per rank)."""
    root = tmp_path_factory.mktemp("ddp")
    data = write_synthetic_dataset(root / "ds", identities=2, per_identity=4, shards=4)
    config = dict(data=[str(data)], id_index=str(root / "index"), steps=STEPS, batch_size=2, lr=1e-3,
                  num_workers=0, shuffle_buffer=2, chunk_shards=1, log_every=1, checkpoint_every=2,
                  validate_every=1000, tensorboard=False, progress=False, model=SMALL, cpu=True, seed=3)
    spec = root / "spec.json"
    spec.write_text(json.dumps({"config": config, "epoch_samples": 8}))
    out = root / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    proc = subprocess.run(LAUNCH + ["--main_process_port", env["MASTER_PORT"],
                                    str(Path(__file__).with_name("ddp_worker.py")), str(spec), str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]
    params = [torch.load(out / f"params-rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return config, ranks, params


def test_processes_form_one_group(ddp_run):
    _, ranks, _ = ddp_run
    assert [r["world"] for r in ranks] == [WORLD, WORLD]
    assert all(r["distributed"] == "DistributedType.MULTI_CPU" for r in ranks)


def test_an_epoch_sees_every_sample_once_across_ranks(ddp_run):
    _, ranks, _ = ddp_run
    seen = [k for r in ranks for k in r["keys"]]
    assert sorted(seen) == sorted(f"id{i}_{j}" for i in range(2) for j in range(4))
    assert not set(ranks[0]["keys"]) & set(ranks[1]["keys"])


def test_parameters_are_identical_on_both_ranks(ddp_run):
    _, _, params = ddp_run
    assert params[0].numel() > 10_000
    assert torch.equal(params[0], params[1])


def test_both_ranks_log_the_global_loss(ddp_run):
    _, ranks, _ = ddp_run
    assert ranks[0]["full"] == ranks[1]["full"] and len(ranks[0]["full"]["total"]) == STEPS


def test_resume_with_two_processes_repeats_the_uninterrupted_losses(ddp_run):
    _, ranks, _ = ddp_run
    for r in ranks:
        assert r["resumed_from"] == 2
        for k, v in r["full"].items():
            torch.testing.assert_close(torch.tensor(r["resumed"][k]), torch.tensor(v[2:]), rtol=1e-6, atol=1e-7)


def test_loss_equals_one_process_over_the_same_global_batch(ddp_run, tmp_path):
    """One process replays both ranks (their shard split, their noise generators) and averages
    the two halves' gradients, as DDP's all-reduce does."""
    config, ranks, params = ddp_run
    cfg = TrainConfig(**{**config, "output_dir": tmp_path / "single"})
    ref = Trainer(cfg)
    assert ref.accelerator.num_processes == 1
    batches = [iter(make_pipeline(ref.urls, ref.transform(cfg.caption_dropout), cfg.batch_size, seed=cfg.seed,
                                  rank=r, world_size=WORLD, chunk_shards=cfg.chunk_shards,
                                  buffer_size=cfg.shuffle_buffer)) for r in range(WORLD)]
    noise = [torch.Generator().manual_seed(seed_of(cfg.seed, "noise", r) % 2**63) for r in range(WORLD)]
    losses = []
    for _ in range(STEPS):
        ref.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for r in range(WORLD):
            terms, _ = ref.forward_loss(ref.model, next(batches[r]), noise[r])
            (terms["total"] / WORLD).backward()
            total += float(terms["total"].detach()) / WORLD
        torch.nn.utils.clip_grad_norm_(ref.params, cfg.max_grad_norm)
        ref.optimizer.step()
        ref.lr_scheduler.step()
        losses.append(total)
    torch.testing.assert_close(torch.tensor(ranks[0]["full"]["total"]), torch.tensor(losses), rtol=1e-4, atol=1e-6)
    single = torch.cat([p.detach().flatten() for p in ref.params])
    torch.testing.assert_close(params[0], single, rtol=1e-3, atol=1e-5)
    ref.close()
