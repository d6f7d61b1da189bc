"""Eq. 8: the weighted sum of the four terms, each returned; t uniform on [0, T); CLI flags -> config."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from denseface.cli import _train, _train_config, parser
from denseface.train.losses import LossWeights, dense_face_loss, diffusion_target, sample_timesteps


def _targets(g):
    return dict(heatmaps=torch.rand(2, 478, 8, 8, generator=g), mask=torch.randint(0, 10, (2, 8, 8), generator=g),
                depth=torch.rand(2, 1, 8, 8, generator=g))


def test_loss_is_the_weighted_sum_of_its_terms():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    dense = {"landmarks": torch.rand(2, 478, 8, 8, generator=g), "mask": torch.randn(2, 10, 8, 8, generator=g),
             "depth": torch.rand(2, 1, 8, 8, generator=g)}
    t = _targets(g)
    w = LossWeights(landmarks=2.0, mask=0.5, depth=3.0)
    terms = dense_face_loss(pred, target, dense, t["heatmaps"], t["mask"], t["depth"], w)
    assert torch.allclose(terms["eps"], F.mse_loss(pred, target))
    assert torch.allclose(terms["mask"], F.cross_entropy(dense["mask"], t["mask"]))
    want = terms["eps"] + 2.0 * terms["landmarks"] + 0.5 * terms["mask"] + 3.0 * terms["depth"]
    assert torch.allclose(terms["total"], want)


def test_perfect_predictions_give_zero_loss():
    g = torch.Generator().manual_seed(1)
    t = _targets(g)
    dense = {"landmarks": t["heatmaps"].clone(), "mask": F.one_hot(t["mask"], 10).permute(0, 3, 1, 2).float() * 100,
             "depth": t["depth"].clone()}
    x = torch.randn(2, 4, 8, 8, generator=g)
    terms = dense_face_loss(x, x, dense, t["heatmaps"], t["mask"], t["depth"])
    assert float(terms["total"]) == pytest.approx(0.0, abs=1e-6)


def test_timesteps_are_uniform_over_the_schedule():
    t = sample_timesteps(20000, 1000, torch.Generator().manual_seed(0), "cpu")
    assert t.dtype == torch.int64 and int(t.min()) == 0 and int(t.max()) == 999
    assert abs(float(t.float().mean()) - 499.5) < 8 and abs(float((t < 100).float().mean()) - 0.1) < 0.01


def test_v_prediction_target():
    s = DDIMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    x, n, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    assert torch.equal(diffusion_target(s, x, n, t), s.get_velocity(x, n, t))
    s = DDIMScheduler(num_train_timesteps=1000)
    assert diffusion_target(s, x, n, t) is n


def test_cli_flags_override_the_yaml_config(tmp_path):
    (tmp_path / "train.yaml").write_text("steps: 7\nlr: 0.01\nbatch_size: 5\n")
    p = parser()
    args = p.parse_args(["train", "--config", str(tmp_path / "train.yaml"), "--data", "a", "--data", "b",
                         "--lr", "0.001", "--workers", "0", "--no-tensorboard", "--gradient-checkpointing"])
    cfg = _train_config(args)
    assert (cfg.data, cfg.steps, cfg.lr, cfg.batch_size, cfg.num_workers) == (["a", "b"], 7, 0.001, 5, 0)
    assert cfg.tensorboard is False and cfg.gradient_checkpointing is True and cfg.progress is True
    args = p.parse_args(["train"])
    assert _train_config(args).data == ["data/sample-dataset"] and args.func is _train
