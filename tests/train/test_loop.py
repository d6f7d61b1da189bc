"""Training loop: exact resume, gradients only on the new modules, the loss goes down, checkpoints."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from denseface.model.dense_face import TRAINABLE, WEIGHTS_NAME
from denseface.train.config import TrainConfig
from denseface.train.loop import Trainer, train
from denseface.train.synthetic import write_synthetic_dataset

SMALL = dict(id_hidden=64, head_hidden=16, pose_embed_channels=(8, 16, 16, 32))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """2 identities x 3 images, all members, over 2 shards (one per DataLoader worker)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("train_loop") / "ds", identities=2, per_identity=3, shards=2)


def _cfg(dataset, out, **kw) -> TrainConfig:
    base = dict(data=[str(dataset)], output_dir=out, id_index=out.parent / "index", steps=6, batch_size=2, lr=1e-3,
                num_workers=0, shuffle_buffer=3, chunk_shards=1, log_every=2, checkpoint_every=1000,
                validate_every=1000, tensorboard=False, progress=False, model=SMALL, cpu=True)
    return TrainConfig(**{**base, **kw})


def test_resume_reproduces_the_uninterrupted_losses(dataset, tmp_path):
    """6 steps with a checkpoint at 3, then a run resumed from it: steps 4..6 match exactly.
    Two DataLoader workers and an odd checkpoint step, so the worker rotation matters."""
    kw = dict(num_workers=2, checkpoint_every=3)
    full = train(_cfg(dataset, tmp_path / "full", **kw))
    assert full.step == 6 and len(full.losses["total"]) == 6
    ckpt = tmp_path / "full" / "checkpoints" / "step-000003"
    resumed = train(_cfg(dataset, tmp_path / "resumed", resume=str(ckpt), **kw))
    assert resumed.start_step == 3 and resumed.step == 6
    for k, v in full.losses.items():
        torch.testing.assert_close(torch.tensor(resumed.losses[k]), torch.tensor(v[3:]), rtol=1e-6, atol=1e-7)
    # a fresh run would not have matched (the losses do depend on the data and noise)
    assert full.losses["total"][3:] != full.losses["total"][:3]


def test_checkpoint_holds_only_the_trained_modules(dataset, tmp_path):
    result = train(_cfg(dataset, tmp_path / "run", steps=2))
    path = result.checkpoint
    assert path.name == "step-000002" and (path.parent / "latest").read_text() == "step-000002"
    names = load_file(str(path / WEIGHTS_NAME)).keys()
    assert {n.split(".")[0] for n in names} == set(TRAINABLE)
    lineage = json.loads((path / "dense_face.json").read_text())["config"]  # what generate embeds references with
    assert lineage["extra"]["id_backend"] == "synthetic" and lineage["id_dim"] == 128
    state = torch.load(path / "trainer.pt", weights_only=True)
    assert state["step"] == 2 and state["optimizer"]["state"]
    assert json.loads((path / "data-rank0.json").read_text())["positions"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "losses.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert set(rows[0]) == {"step", "total", "eps", "landmarks", "mask", "depth"}
    again = train(_cfg(dataset, tmp_path / "run", steps=3, resume="latest"))
    assert (again.start_step, again.step) == (2, 3)


def test_gradients_reach_exactly_the_new_modules(dataset, tmp_path):
    trainer = Trainer(_cfg(dataset, tmp_path / "grad"))
    model = trainer.dense_face
    new = {id(p) for p in model.trainable_modules().parameters()}
    named = dict(model.named_parameters())
    frozen = {n: p.detach().clone() for n, p in named.items() if id(p) not in new}
    trained = {n: p.detach().clone() for n, p in named.items() if id(p) in new}
    assert frozen and trained and len(trained) == len(trainer.params)
    batches = iter(trainer.train_loader())
    terms = trainer.train_step(next(batches))
    assert all(torch.isfinite(v) for v in terms.values())
    for n, p in named.items():
        if n in frozen:
            assert not p.requires_grad and p.grad is None, n
            assert torch.equal(p, frozen[n]), n
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), n
    # Step 1: the pose branch's zero-convolutions shield the layers before them (zero gradient,
    # as in ControlNet); once they have moved, step 2 reaches every new parameter.
    moved = {n for n in trained if not torch.equal(named[n], trained[n])}
    zero_convs = ("pose_branch.net.controlnet_down_blocks.", "pose_branch.net.controlnet_mid_block.")
    assert {n for n in trained if n.startswith(zero_convs) or not n.startswith("pose_branch.")} <= moved
    trainer.train_step(next(batches))
    moved = [n for n in trained if not torch.equal(named[n], trained[n])]
    assert len(moved) == len(trained)  # AdamW moves every parameter that got a gradient
    for part in (model.text_encoder, model.vae):
        assert all(p.grad is None for p in part.parameters())
    trainer.close()


def test_short_training_run_lowers_the_loss(dataset, tmp_path):
    cfg = _cfg(dataset, tmp_path / "short", steps=40, batch_size=3, log_every=10, validate_every=40,
               tensorboard=True, caption_dropout=0.0)
    result = train(cfg)
    first, last = result.window_means(8)
    assert last["total"] < 0.8 * first["total"], (first, last)
    assert all(last[k] < first[k] for k in ("eps", "landmarks", "mask", "depth")), (first, last)
    events = list((tmp_path / "short" / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 10_000  # scalars and the validation picture


def test_gradient_checkpointing_gives_the_same_step(dataset, tmp_path):
    """Checkpointing recomputes the UNet blocks in backward: same loss, same gradients."""
    steps = []
    for ckpt in (False, True):
        trainer = Trainer(_cfg(dataset, tmp_path / f"ckpt{ckpt}", gradient_checkpointing=ckpt))
        assert trainer.sd.unet.is_gradient_checkpointing == ckpt
        terms = trainer.train_step(next(iter(trainer.train_loader())))
        steps.append((terms, [p.grad.clone() for p in trainer.params]))
    (a, ga), (b, gb) = steps
    torch.testing.assert_close(a, b)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)


def test_more_processes_than_shards_is_one_error_line_before_any_model_loads(dataset, tmp_path, monkeypatch, capsys):
    """A 2-process launch on a 1-shard dataset: every rank says so in one line and exits non-zero."""
    from types import SimpleNamespace

    from denseface.cli import main
    from denseface.train import loop

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built before the shard check")

    launch = SimpleNamespace(num_processes=2, process_index=0)
    monkeypatch.setattr(loop, "make_accelerator", lambda cfg: launch)
    monkeypatch.setattr(loop, "build_tiny_sd", no_model)
    one_shard = write_synthetic_dataset(tmp_path / "one", identities=1, per_identity=1, shards=1)
    code = main(["train", "--data", str(one_shard), "--out", str(tmp_path / "run"), "--steps", "1", "--cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("error: 1 shard(s) for 2 processes"), err
