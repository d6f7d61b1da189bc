"""Inference (DESIGN §6, paper Fig. 7) on the tiny offline model: G1 == StableDiffusionPipeline,
latent blending keeps the background latent exactly, paste-back, face swap, the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from PIL import Image

from denseface.cli import main
from denseface.etl.sample_data import sample_photo
from denseface.generation.face_region import FaceAnalyzer, feather_alpha, latent_mask_from, load_photo, paste_back
from denseface.generation.pipeline import (
    PANEL_GAP,
    PANEL_MIN_HEIGHT,
    DenseFaceGenerator,
    latent_blending,
    side_by_side,
)
from denseface.model.tiny_sd import save_tiny_sd


@pytest.fixture(scope="module")
def gen() -> DenseFaceGenerator:
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return DenseFaceGenerator.load(None, seed=0, device="cpu")
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="module")
def biden_small() -> np.ndarray:
    """The real target photo at reduced size (970x2204 -> 132x300)."""
    im = Image.fromarray(load_photo(sample_photo("biden")))
    return np.asarray(im.resize((im.width * 300 // im.height, 300), Image.LANCZOS))


def _unit(dim: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def _outside_quad(shape: tuple[int, ...], quad: np.ndarray, margin: int = 2) -> np.ndarray:
    """Pixels outside the crop quad's bounding box (+ margin): far from anything pasted."""
    h, w = shape[:2]
    x0, y0 = np.floor(quad.min(0)).astype(int) - margin
    x1, y1 = np.ceil(quad.max(0)).astype(int) + margin
    far = np.ones((h, w), bool)
    far[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = False
    return far


@pytest.mark.parametrize("guidance,negative", [(7.5, ""), (4.0, "old"), (1.0, "")])
def test_g1_equals_plain_stable_diffusion_pipeline(tmp_path, guidance, negative):
    folder = save_tiny_sd(tmp_path / "tiny")
    g = DenseFaceGenerator.load(folder, device="cpu")  # Dense-Face installed on this UNet, run in G1
    ours = g.text_to_image("a photo of a smiling man", negative, steps=25, guidance=guidance, seed=3, output="float")

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.unet.requires_grad_(False)  # frozen as Dense-Face's (CPU float kernels differ otherwise)
    pipe.set_progress_bar_config(disable=True)
    plain = pipe("a photo of a smiling man", negative_prompt=negative or None, num_inference_steps=25,
                 guidance_scale=guidance, generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    assert ours.shape == plain.shape == (64, 64, 3)
    assert np.array_equal(ours, plain)
    u8 = g.text_to_image("a photo of a smiling man", negative, steps=25, guidance=guidance, seed=3)
    assert np.array_equal(u8, (plain * 255).round().astype(np.uint8))


def test_latent_blending_keeps_background_latent_exactly(gen):
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    region = gen.analyzer.region(base, gen.native_size)  # noise: the documented fallback region
    assert region.source == "fallback" and region.notes and "default" in region.notes[0]
    face, z0, z_bg_init, lmask = gen.repaint(region, _unit(128), "a photo of a face", steps=10, seed=1)
    m = torch.from_numpy(lmask)[None, None].expand_as(z0)
    assert lmask.shape == (8, 8) and 0 < lmask.sum() < lmask.size
    assert torch.equal(z0[~m], z_bg_init[~m])  # noise(z_bg_init, 0) = z_bg_init, bit for bit
    assert not torch.allclose(z0[m], z_bg_init[m])  # the face cells were regenerated
    assert face.shape == (64, 64, 3) and face.dtype == np.uint8


def test_latent_blending_algorithm_with_a_stub_denoiser():
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    sched.set_timesteps(7)
    z_bg = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    mask[..., 1:4, 2:5] = True
    seen = []

    def denoise(z, t):
        seen.append(int(t))
        return torch.ones_like(z)  # pushes the foreground away from z_bg

    z0 = latent_blending(denoise, sched, z_bg, mask, sched.timesteps, torch.Generator().manual_seed(1))
    assert seen == [int(t) for t in sched.timesteps]  # one denoise per step, k down to the last
    m = mask.expand_as(z0)
    assert torch.equal(z0[~m], z_bg[~m]) and not torch.allclose(z0[m], z_bg[m])


def test_latent_mask_covers_every_masked_pixel():
    mask = np.zeros((64, 64), bool)
    mask[20:22, 30:45] = True
    lm = latent_mask_from(mask, (8, 8))
    assert lm[2, 3:6].all() and lm.sum() == 3


def test_paste_back_of_the_unchanged_crop_gives_the_base_image(biden_small):
    base = biden_small
    region = FaceAnalyzer().region(base, 256, fallback=False)
    assert region.source == "detected" and region.landmarks is not None
    alpha = feather_alpha(region.mask)
    out = paste_back(base, region.crop, region.matrix, alpha)
    assert out.shape == base.shape and out.dtype == np.uint8
    import cv2

    h, w = base.shape[:2]
    a = cv2.warpAffine(alpha, cv2.invertAffineTransform(region.matrix), (w, h))
    face = a > 0.5
    assert face.sum() > 500
    diff = np.abs(out.astype(int) - base.astype(int))
    assert diff[face].mean() < 3.0, diff[face].mean()
    assert np.array_equal(out[a == 0], base[a == 0])  # untouched wherever the mask does not reach
    assert np.array_equal(out[_outside_quad(base.shape, region.quad)], base[_outside_quad(base.shape, region.quad)])


def test_face_swap_on_a_real_photo_keeps_size_and_background(gen, biden_small):
    res = gen.generate(sample_photo("obama"), target=biden_small, steps=10, seed=0)
    assert res.mode == "swap" and res.region.source == "detected"
    assert res.final.shape == biden_small.shape and res.final.dtype == np.uint8
    assert res.id_embedding.shape == (128,) and abs(np.linalg.norm(res.id_embedding) - 1) < 1e-4
    far = _outside_quad(biden_small.shape, res.region.quad)
    assert far.mean() > 0.5 and np.array_equal(res.final[far], biden_small[far])
    assert not np.array_equal(res.final, biden_small)  # the face was repainted
    assert -30 < res.region.yaw < 30  # a frontal portrait


def test_face_swap_without_a_face_is_an_error(gen):
    noise = np.random.default_rng(1).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="no usable face"):
        gen.generate(sample_photo("obama"), target=noise, steps=2)


def test_side_by_side_layout():
    panels = [np.zeros((64, 64, 3), np.uint8), np.zeros((64, 32, 3), np.uint8)]
    out = side_by_side(panels)
    assert out.shape == (PANEL_MIN_HEIGHT, PANEL_MIN_HEIGHT + PANEL_MIN_HEIGHT // 2 + PANEL_GAP, 3)


def test_cli_smoke_writes_final_panels_and_json(tmp_path):
    out = tmp_path / "result.png"
    rc = main(["generate", "--prompt", "a photo of a smiling man", "--reference", str(sample_photo("obama")),
               "--steps", "25", "--seed", "0", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    final = np.asarray(Image.open(out))
    assert final.shape == (64, 64, 3)
    panels = np.asarray(Image.open(tmp_path / "result_panels.png"))
    h = PANEL_MIN_HEIGHT
    assert panels.shape == (h, 4 * h + 3 * PANEL_GAP, 3)  # base | crop | mask | final
    gaps = [panels[:, (i + 1) * h + i * PANEL_GAP:(i + 1) * (h + PANEL_GAP)] for i in range(3)]
    assert all((g == 255).all() for g in gaps)
    assert np.array_equal(panels[:, -h:][::4, ::4], final)  # the last panel is the final image
    info = json.loads((tmp_path / "result.json").read_text())
    assert info["mode"] == "text" and info["face_source"] == "fallback" and info["notes"]
    assert info["id_backend"] == "dlib" and info["timings_s"]["total"] < 60


def test_cli_without_prompt_or_target_fails(tmp_path):
    assert main(["generate", "--reference", str(sample_photo("obama")), "--out", str(tmp_path / "x.png")]) == 2


def test_weights_folder_sets_config_and_identity_backend(tmp_path):
    from denseface.generation.pipeline import TINY_CONFIG
    from denseface.model.dense_face import DenseFace
    from denseface.model.tiny_sd import build_tiny_sd

    DenseFace.from_sd(build_tiny_sd(0), TINY_CONFIG).save_trained(tmp_path / "w")
    g = DenseFaceGenerator.load(None, tmp_path / "w", device="cpu")
    assert g.model.config == TINY_CONFIG and g.id_backend == "dlib"


def test_identity_backend_is_the_recorded_one_never_a_guess():
    from denseface.generation.pipeline import identity_backend_for
    from denseface.model.dense_face import DenseFaceConfig

    assert identity_backend_for(DenseFaceConfig(id_dim=512, extra={"id_backend": "arcface"})) == "arcface"
    assert identity_backend_for(DenseFaceConfig(id_dim=128, extra={"id_backend": "dlib"}), "dlib") == "dlib"
    with pytest.raises(ValueError, match="trained with identity backend arcface .512-d.*--id-backend dlib differs"):
        identity_backend_for(DenseFaceConfig(id_dim=512, extra={"id_backend": "arcface"}), "dlib")
    with pytest.raises(ValueError, match="does not record the identity backend.*--id-backend"):
        identity_backend_for(DenseFaceConfig(id_dim=128))  # no guess from the dimension
    with pytest.raises(ValueError, match="synthetic"):
        identity_backend_for(DenseFaceConfig(id_dim=128, extra={"id_backend": "synthetic"}))
    assert identity_backend_for(DenseFaceConfig(id_dim=128, extra={"id_backend": "synthetic"}), "dlib") == "dlib"


def test_mismatched_identity_backend_is_refused_by_the_cli(tmp_path, capsys):
    from denseface.generation.pipeline import TINY_CONFIG
    from denseface.model.dense_face import DenseFace
    from denseface.model.tiny_sd import build_tiny_sd

    DenseFace.from_sd(build_tiny_sd(0), TINY_CONFIG).save_trained(tmp_path / "w")  # records dlib
    out = tmp_path / "x.png"
    rc = main(["generate", "--prompt", "a face", "--reference", str(sample_photo("obama")), "--weights",
               str(tmp_path / "w"), "--id-backend", "arcface", "--device", "cpu", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and "trained with identity backend dlib" in err
    assert "Traceback" not in err and not out.exists()


def test_arcface_model_without_identity_weights_fails_clearly():
    from dataclasses import replace

    from denseface.generation.pipeline import TINY_CONFIG
    from denseface.model.dense_face import DenseFace
    from denseface.model.tiny_sd import build_tiny_sd

    sd = build_tiny_sd(0)
    model = DenseFace.from_sd(sd, replace(TINY_CONFIG, id_dim=512, extra={"id_backend": "arcface"}))
    g = DenseFaceGenerator(sd, model)
    assert g.id_backend == "arcface"
    with pytest.raises(FileNotFoundError, match="arcface needs weights"):
        g.identity(sample_photo("obama"))


@torch.no_grad()
def test_g2_condition_carries_identity_and_unconditional_branch_does_not(gen):
    from denseface.model.tiny_sd import encode_prompt

    c1 = torch.from_numpy(_unit(128, 1))[None]
    c2 = torch.from_numpy(_unit(128, 2))[None]
    cond1, uncond1 = gen._text("a photo of a man", "blurry", True, c1)
    cond2, uncond2 = gen._text("a photo of a man", "blurry", True, c2)
    assert (cond1 - cond2).abs().max() > 0  # the identity token is in the prompt
    assert torch.equal(uncond1, encode_prompt(gen.sd, ["blurry"])) and torch.equal(uncond1, uncond2)  # plain
    g1, _ = gen._text("a photo of * smiling", "", False)  # G1: the placeholder reads as the anchor word
    assert torch.equal(g1, encode_prompt(gen.sd, ["a photo of face smiling"]))


def test_cli_refuses_weights_of_the_old_identity_path(tmp_path, capsys):
    from denseface.generation.pipeline import TINY_CONFIG
    from denseface.model.dense_face import CONFIG_NAME, DenseFace
    from denseface.model.tiny_sd import build_tiny_sd

    DenseFace.from_sd(build_tiny_sd(0), TINY_CONFIG).save_trained(tmp_path / "w")
    info = json.loads((tmp_path / "w" / CONFIG_NAME).read_text())
    del info["format"]
    (tmp_path / "w" / CONFIG_NAME).write_text(json.dumps(info))
    rc = main(["generate", "--prompt", "a face", "--reference", str(sample_photo("obama")), "--weights",
               str(tmp_path / "w"), "--device", "cpu", "--out", str(tmp_path / "x.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and err[0].startswith("error: ") and "identity format 1" in err[0]
