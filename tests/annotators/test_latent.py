"""The optional latent stage (annotators/latent.py) on a tiny SD's VAE saved and loaded through
the real code, and the trainer taking those latents only from its own VAE."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from denseface.annotators.base import Item
from denseface.annotators.latent import Latent
from denseface.config import BuildConfig, StageConfig
from denseface.model.tiny_sd import build_tiny_sd, save_tiny_sd, vae_fingerprint


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return save_tiny_sd(tmp_path_factory.mktemp("latent") / "sd", seed=0)


def _stage(backend: str = "default", weights=None) -> Latent:
    return Latent(BuildConfig(stages={"latent": StageConfig(backend=backend, weights=weights)}))


def _items(n: int, size: int = 512) -> list[Item]:
    rng = np.random.default_rng(0)
    return [Item(key=f"k{i}", identity="p", source="t", source_path="-", unit=0,
                 image=rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for i in range(n)]


def test_default_writes_nothing():
    stage = _stage()
    stage.check()
    items = stage.process(_items(1, 16))
    assert "latent" not in items[0].arrays and items[0].versions["latent"] == "none@1"


def test_vae_stage_stores_the_posterior_mean_and_the_vae_fingerprint(sd_folder):
    stage = _stage("vae", str(sd_folder))
    stage.check()
    items = stage.process(_items(2))
    vae = build_tiny_sd(0).vae  # the same weights, built again: same fingerprint
    for it in items:
        assert it.ok and it.arrays["latent"].shape == (4, 64, 64)
        assert it.fields["latent_vae"] == vae_fingerprint(vae)
        x = torch.from_numpy(it.image).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        with torch.no_grad():
            want = vae.encode(x).latent_dist.mean[0].numpy()
        np.testing.assert_allclose(it.arrays["latent"], want, rtol=1e-3, atol=2e-4)  # batch of 2 vs 1
    assert not np.allclose(items[0].arrays["latent"], items[1].arrays["latent"])


def test_fingerprint_tells_vaes_apart():
    a, b = build_tiny_sd(0).vae, build_tiny_sd(1).vae
    assert vae_fingerprint(a) == vae_fingerprint(build_tiny_sd(0).vae) != vae_fingerprint(b)


def test_missing_vae_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="stages.latent.weights is unset"):
        _stage("vae").check()
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        _stage("vae", str(tmp_path)).check()
    with pytest.raises(ValueError, match="unknown backend"):
        _stage("taesd")
