"""Identity token c' = lambda * MLP(c_id) + e("face")."""

from __future__ import annotations

import pytest
import torch

from denseface.model.identity import IdentityMLP, word_embedding
from denseface.model.tiny_sd import build_tiny_sd


def test_token_shape_and_anchor():
    sd = build_tiny_sd()
    face = word_embedding(sd.text_encoder, sd.tokenizer, "face")
    fid = sd.tokenizer("face", add_special_tokens=False).input_ids
    assert len(fid) == 1 and torch.equal(face, sd.text_encoder.get_input_embeddings().weight[fid[0]])
    mlp = IdentityMLP(face, id_dim=128, hidden_dim=64)
    ids = torch.randn(3, 128)
    tok = mlp(ids)
    assert tok.shape == (3, 1, 32)
    torch.testing.assert_close(tok[:, 0], 1e-2 * mlp.mlp(ids) + face)
    ctx = mlp.append_to(torch.randn(3, 77, 32), ids)
    assert ctx.shape == (3, 78, 32) and torch.equal(ctx[:, -1:], tok)
