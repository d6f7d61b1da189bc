"""DenseFace: G1 == plain UNet exactly, an untrained G2 == G1 with the identity token, G2 trains only
the new modules, checkpoints round-trip."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from denseface.model.dense_face import DenseFace, DenseFaceConfig
from denseface.model.tiny_sd import build_tiny_sd, encode_prompt

CFG = DenseFaceConfig(id_dim=128, id_hidden=64, head_hidden=16, pose_embed_channels=(8, 16, 16, 32))


def _batch():
    g = torch.Generator().manual_seed(0)
    return dict(
        noisy_latents=torch.randn(2, 4, 8, 8, generator=g),
        timesteps=torch.tensor([20, 800]),
        pose_image=torch.rand(2, 3, 64, 64, generator=g),
    )


PROMPTS = ["a photo of a face", "portrait of a smiling woman"]
ID_EMB = torch.randn(2, 128, generator=torch.Generator().manual_seed(1))


def _model(seed: int = 0):
    sd = build_tiny_sd(seed)
    text = encode_prompt(sd, PROMPTS)
    sd.unet.requires_grad_(False)  # the plain reference is frozen SD too
    return sd, text


def _g2_text(model: DenseFace) -> torch.Tensor:
    return model.encode_text([model.prompt_for(p, identity=True) for p in PROMPTS], ID_EMB)


def _train(model: DenseFace, steps: int = 3) -> None:
    b = _batch()
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    for _ in range(steps):
        eps, dense = model(text_emb=_g2_text(model), mode="G2", **b)
        loss = eps.pow(2).mean() + sum(v.pow(2).mean() for v in dense.values())
        opt.zero_grad()
        loss.backward()
        opt.step()


@torch.no_grad()
def test_g1_is_plain_unet_exactly():
    sd, text = _model()
    b = _batch()
    plain = sd.unet(b["noisy_latents"], b["timesteps"], encoder_hidden_states=text).sample
    model = DenseFace.from_sd(sd, CFG)
    eps, dense = model(text_emb=text, mode="G1", **b)
    assert dense is None and torch.equal(eps, plain)
    eps2, dense2 = model(text_emb=_g2_text(model), mode="G2", **b)
    assert dense2 is not None and not torch.equal(eps2, plain)
    assert torch.equal(model(text_emb=text, mode="G1", **b)[0], plain)
    assert model.mode == "G1"


@torch.no_grad()
def test_untrained_g2_starts_at_g1_with_identity_token():
    """Zero-convolutions + zero PC-adapters: G2 with the identity MLP zeroed is G1 on the prompt whose
    placeholder reads as the anchor word; the paper's ungated branch starts elsewhere."""
    sd, _ = _model()
    b = _batch()
    model = DenseFace.from_sd(sd, CFG)
    torch.nn.init.zeros_(model.identity.mlp[-1].weight)
    torch.nn.init.zeros_(model.identity.mlp[-1].bias)
    g2, _ = model(text_emb=_g2_text(model), mode="G2", **b)
    anchored = encode_prompt(sd, ["face " + p for p in PROMPTS])
    g1, _ = model(text_emb=anchored, mode="G1", **b)
    torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-5)
    plain, _ = model(text_emb=encode_prompt(sd, PROMPTS), mode="G1", **b)
    assert (g2 - plain).abs().max() > 1e-3  # the identity token is a word of the condition

    for attention in (True, False):
        ungated = DenseFace.from_sd(build_tiny_sd(0), replace(CFG, zero_conv=False, pose_attention=attention))
        ungated.identity.load_state_dict(model.identity.state_dict())
        far, _ = ungated(text_emb=_g2_text(ungated), mode="G2", **b)
        assert (far - g1).abs().max() > 10 * (g2 - g1).abs().max() + 1e-3


def test_g2_grads_only_on_new_modules_and_output_moves():
    sd, text = _model()
    b = _batch()
    model = DenseFace.from_sd(sd, CFG)
    frozen = [*model.unet.parameters(), *model.text_encoder.parameters(), *model.vae.parameters()]
    assert not any(p.requires_grad for p in frozen)
    trainable = model.trainable_parameters()
    n_new = sum(1 for _ in model.trainable_modules().parameters())
    assert len(trainable) == n_new > 0
    assert {id(p) for p in trainable}.isdisjoint({id(p) for p in frozen})

    eps, dense = model(text_emb=_g2_text(model), mode="G2", **b)
    assert dense["landmarks"].shape == (2, 478, 8, 8)
    assert dense["mask"].shape == (2, 10, 8, 8) and dense["depth"].shape == (2, 1, 8, 8)
    (eps.pow(2).mean() + sum(v.pow(2).mean() for v in dense.values())).backward()
    missing = [n for n, p in model.trainable_modules().named_parameters() if p.grad is None]
    assert missing == []
    assert all(p.grad is None for p in frozen)
    adapter_grads = [p.grad.abs().sum() for p in model.pc_adapter.parameters()]
    assert all(float(gr) > 0 for gr in adapter_grads)
    assert all(float(p.grad.abs().sum()) > 0 for p in model.identity.parameters())  # through the text encoder

    with torch.no_grad():
        before = model(text_emb=_g2_text(model), mode="G2", **b)[0]
    _train(model)
    with torch.no_grad():
        after = model(text_emb=_g2_text(model), mode="G2", **b)[0]
        plain = sd.unet(b["noisy_latents"], b["timesteps"], encoder_hidden_states=text).sample
    assert (after - before).abs().max() > 1e-5
    assert (after - plain).abs().max() > 1e-4
    assert torch.equal(model(text_emb=text, mode="G1", **b)[0], plain)


def test_train_mode_keeps_sd_in_eval():
    sd, _ = _model()
    model = DenseFace.from_sd(sd, CFG).train()
    assert model.pose_branch.training and not model.unet.training and not model.vae.training


def test_save_load_trained_round_trip(tmp_path):
    sd, _ = _model()
    model = DenseFace.from_sd(sd, CFG)
    _train(model, steps=2)
    model.save_trained(tmp_path / "ckpt")
    assert {p.name for p in (tmp_path / "ckpt").iterdir()} == {"dense_face.safetensors", "dense_face.json"}

    sd2, _ = _model()
    torch.manual_seed(123)  # fresh heads / MLP init differ from the trained ones
    fresh = DenseFace.from_trained(sd2, tmp_path / "ckpt")
    a, b2 = model.trainable_modules().state_dict(), fresh.trainable_modules().state_dict()
    assert a.keys() == b2.keys() and all(torch.equal(a[k], b2[k]) for k in a)
    assert not any(k.startswith("unet.") for k in a)
    b = _batch()
    with torch.no_grad():
        e1, d1 = model(text_emb=_g2_text(model), mode="G2", **b)
        e2, d2 = fresh(text_emb=_g2_text(fresh), mode="G2", **b)
    assert torch.equal(e1, e2) and all(torch.equal(d1[k], d2[k]) for k in d1)

    other = DenseFace.from_sd(build_tiny_sd(), DenseFaceConfig(id_dim=512))
    with pytest.raises(ValueError, match="config"):
        other.load_trained(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        fresh.load_trained(tmp_path / "nowhere")


@torch.no_grad()
def test_g1_matches_plain_pipeline(tmp_path):
    from diffusers import StableDiffusionPipeline

    from denseface.model.tiny_sd import save_tiny_sd

    save_tiny_sd(tmp_path / "sd")
    kw = dict(num_inference_steps=3, output_type="np")
    plain = StableDiffusionPipeline.from_pretrained(tmp_path / "sd", safety_checker=None)
    plain.unet.requires_grad_(False)
    ref = plain("a face", generator=torch.Generator().manual_seed(0), **kw).images
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "sd", safety_checker=None)
    model = DenseFace(pipe.unet, pipe.text_encoder, pipe.tokenizer, CFG, vae=pipe.vae)
    model.set_mode("G1")
    got = pipe("a face", generator=torch.Generator().manual_seed(0), **kw).images
    assert (got == ref).all()
