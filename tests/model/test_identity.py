"""Identity token c' = lambda * MLP(c_id) + e(anchor): the input embedding of a placeholder that goes
through the frozen text encoder (paper Eq. 4, the released code's `*` token)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from denseface.model.dense_face import CONFIG_NAME, DenseFace, DenseFaceConfig
from denseface.model.identity import IdentityMLP, IdentityPrompt, word_embedding
from denseface.model.tiny_sd import build_tiny_sd, encode_prompt

CFG = DenseFaceConfig(id_dim=128, id_hidden=64, head_hidden=16, pose_embed_channels=(8, 16, 16, 32))


def _model(config: DenseFaceConfig = CFG) -> tuple:
    sd = build_tiny_sd(0)
    return sd, DenseFace.from_sd(sd, config)


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 128, generator=torch.Generator().manual_seed(seed))


def test_token_is_anchor_plus_scaled_mlp():
    sd = build_tiny_sd()
    face = word_embedding(sd.text_encoder, sd.tokenizer, "face")
    fid = sd.tokenizer("face", add_special_tokens=False).input_ids
    assert len(fid) == 1 and torch.equal(face, sd.text_encoder.get_input_embeddings().weight[fid[0]])
    mlp = IdentityMLP(face, id_dim=128, hidden_dim=64)
    ids = _ids(3, 0)
    tok = mlp(ids)
    assert tok.shape == (3, 32)
    torch.testing.assert_close(tok, 1e-2 * mlp.mlp(ids) + face)


def test_prompt_template_and_explicit_placeholder():
    _, model = _model()
    assert model.prompt_for("a photo of a man", identity=True) == "* a photo of a man"
    assert model.prompt_for("", identity=True) == "*"
    assert model.prompt_for("a photo of * smiling", identity=True) == "a photo of * smiling"  # written: kept
    assert model.prompt_for("a photo of * smiling", identity=False) == "a photo of face smiling"
    assert model.prompt_for("a photo of a man", identity=False) == "a photo of a man"
    _, custom = _model(replace(CFG, prompt_template="a photo of {placeholder}, {prompt}", anchor_word="person"))
    assert custom.prompt_for("smiling", identity=True) == "a photo of *, smiling"
    assert custom.prompt_for("* smiling", identity=False) == "person smiling"
    with pytest.raises(ValueError, match="template"):
        IdentityPrompt(template="{prompt} only")
    with pytest.raises(ValueError, match="cut off"):
        model.prompt_for("a " * 80 + "*", identity=True)


@torch.no_grad()
def test_identity_changes_placeholder_and_later_states_only():
    _, model = _model()
    prompt = model.prompt_for("a photo of * smiling at the camera", identity=True)
    ids = model.tokenizer(prompt).input_ids
    at = ids.index(model.placeholder_id)
    a = model.encode_text([prompt], _ids(1, 1))
    b = model.encode_text([prompt], _ids(1, 2))
    diff = (a - b).abs().amax(-1)[0]  # per position
    assert at == 4 and torch.equal(diff[:at], torch.zeros(at))  # causal mask: nothing before it moves
    assert bool((diff[at:] > 0).all())  # the placeholder, every later word, end of text and padding


@torch.no_grad()
def test_g1_condition_is_plain_sd_and_ignores_identity():
    sd, model = _model()
    plain = encode_prompt(sd, ["a photo of a man"])
    g1 = model.encode_text([model.prompt_for("a photo of a man", identity=False)])
    assert torch.equal(g1, plain)
    model.identity.mlp[-1].weight.add_(1.0)
    assert torch.equal(model.encode_text([model.prompt_for("a photo of a man", identity=False)]), plain)
    with pytest.raises(ValueError, match="no id_emb"):
        model.encode_text(["* a photo"])


@torch.no_grad()
def test_zero_identity_is_the_anchor_word():
    sd, model = _model(replace(CFG, id_scale=0.0))
    prompt = model.prompt_for("portrait of a smiling woman", identity=True)
    got = model.encode_text([prompt, prompt], torch.cat([torch.zeros(1, 128), _ids(1, 3)]))
    want = encode_prompt(sd, ["face portrait of a smiling woman"] * 2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_mlp_gets_gradient_through_frozen_encoder():
    _, model = _model()
    prompts = [model.prompt_for("a photo of a man", identity=True), ""]  # the second row: a dropped caption
    model.encode_text(prompts, _ids(2, 4)).pow(2).sum().backward()
    grads = {n: p.grad for n, p in model.identity.named_parameters()}
    assert grads and all(g is not None and float(g.abs().sum()) > 0 for g in grads.values())
    assert all(p.grad is None for p in model.text_encoder.parameters())

    model.identity.zero_grad(set_to_none=True)
    model.encode_text(["", ""], _ids(2, 4)).sum().backward()  # all captions dropped: zero, not missing, grads
    assert all(p.grad is not None and float(p.grad.abs().sum()) == 0 for p in model.identity.parameters())


def test_old_identity_checkpoints_are_refused(tmp_path):
    sd, model = _model()
    model.save_trained(tmp_path / "ckpt")
    info = json.loads((tmp_path / "ckpt" / CONFIG_NAME).read_text())
    assert info["format"] == 2
    del info["format"]  # what the appended-token version wrote
    (tmp_path / "ckpt" / CONFIG_NAME).write_text(json.dumps(info))
    with pytest.raises(ValueError, match="identity format 1.*retrain"):
        DenseFace.from_trained(sd, tmp_path / "ckpt")


@torch.no_grad()
def test_released_linear_batchnorm_projector():
    _, model = _model(replace(CFG, id_projector="linear_bn", anchor_word="person"))
    proj, norm = model.identity.mlp
    assert proj.bias is None and isinstance(norm, torch.nn.BatchNorm1d)
    assert sorted(model.identity.state_dict()) == sorted(
        ["anchor_embedding", "mlp.0.weight", "mlp.1.weight", "mlp.1.bias", "mlp.1.running_mean",
         "mlp.1.running_var", "mlp.1.num_batches_tracked"])
    norm.running_mean.uniform_(-1, 1)
    norm.running_var.uniform_(0.5, 2)
    norm.weight.uniform_(0.5, 2)
    model.eval()
    ids = _ids(2, 5)
    bn = (ids @ proj.weight.T - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias
    person_id = model.tokenizer("person", add_special_tokens=False).input_ids[0]
    person = model.text_encoder.get_input_embeddings().weight[person_id]
    torch.testing.assert_close(model.identity(ids), person + 0.01 * bn)
    with pytest.raises(ValueError, match="projector"):
        IdentityMLP(person, projector="mlp2")
