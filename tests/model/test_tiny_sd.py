"""Tiny offline SD: build, diffusers-layout save/load round trip, clear errors, plain pipeline."""

from __future__ import annotations

import shutil

import pytest
import torch

from denseface.model.tiny_sd import (
    SD_SUBFOLDERS,
    build_tiny_sd,
    encode_prompt,
    load_sd,
    save_tiny_sd,
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_sd(tmp_path_factory.mktemp("tiny_sd"))


def _state_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_build_is_sd_shaped_and_deterministic():
    a, b = build_tiny_sd(seed=0), build_tiny_sd(seed=0)
    assert _state_equal(a.unet, b.unet)
    assert a.unet.config.cross_attention_dim == a.text_encoder.config.hidden_size
    assert a.unet.config.use_linear_projection
    assert 2 ** (len(a.vae.config.block_out_channels) - 1) == 8
    assert a.tokenizer.tokenize("face") == ["face</w>"]
    emb = encode_prompt(a, ["a photo of a face", "x"])
    assert emb.shape == (2, 77, 32)
    lat = a.vae.encode(torch.rand(1, 3, 64, 64) * 2 - 1).latent_dist.mean
    assert lat.shape == (1, 4, 8, 8)


def test_save_load_round_trip(tiny_dir):
    assert all((tiny_dir / s).is_dir() for s in SD_SUBFOLDERS)
    ref, got = build_tiny_sd(seed=0), load_sd(tiny_dir)
    for name in ("unet", "vae", "text_encoder"):
        assert _state_equal(getattr(ref, name), getattr(got, name)), name
    assert got.tokenizer("a face").input_ids == ref.tokenizer("a face").input_ids
    assert got.scheduler.config.num_train_timesteps == 1000


def test_load_sd_missing_path_names_it(tmp_path):
    missing = tmp_path / "no_such_sd21"
    with pytest.raises(FileNotFoundError, match="no_such_sd21") as exc:
        load_sd(missing)
    assert "save_tiny_sd" in str(exc.value)


def test_load_sd_missing_subfolder_names_it(tiny_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_dir, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(FileNotFoundError, match="vae"):
        load_sd(broken)


def test_plain_pipeline_loads_tiny_folder(tiny_dir):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir, safety_checker=None)
    out = pipe("a photo of a face", num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 64, 64, 3)
