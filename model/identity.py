"""Identity text embedding (paper §3.2, Eq. 4): c' = lambda * MLP(c_id) + e("face").

Why: anchoring the identity token on the frozen word embedding of "face" starts it at a meaningful
point of the text space, and the small lambda (1e-2) keeps the MLP's offset a gentle shift.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def word_embedding(text_encoder: nn.Module, tokenizer, word: str = "face") -> torch.Tensor:
    """Frozen input-token embedding of `word` (k,), mean over its BPE tokens if it splits."""
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"tokenizer gives no token for {word!r}")
    table = text_encoder.get_input_embeddings().weight
    return table[torch.tensor(ids, device=table.device)].float().mean(0).detach().cpu()


class IdentityMLP(nn.Module):
    """Maps an identity embedding (B, d) to one text token (B, 1, k) to append to c (B, n, k)."""

    def __init__(
        self,
        face_embedding: torch.Tensor,
        id_dim: int = 512,
        hidden_dim: int = 1024,
        scale: float = 1e-2,
    ) -> None:
        """`face_embedding`: e("face"), shape (k,), k = text-encoder hidden size; id_dim 128 dlib / 512 ArcFace."""
        super().__init__()
        if face_embedding.ndim != 1:
            raise ValueError(f"face_embedding must be (k,), got {tuple(face_embedding.shape)}")
        k = face_embedding.shape[0]
        self.id_dim, self.scale = id_dim, scale
        self.mlp = nn.Sequential(nn.Linear(id_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, k))
        self.register_buffer("face_embedding", face_embedding.detach().clone().float())

    def forward(self, id_emb: torch.Tensor) -> torch.Tensor:
        if id_emb.ndim != 2 or id_emb.shape[1] != self.id_dim:
            raise ValueError(f"id_emb must be (B, {self.id_dim}), got {tuple(id_emb.shape)}")
        dtype = self.mlp[0].weight.dtype
        token = self.scale * self.mlp(id_emb.to(dtype)) + self.face_embedding.to(dtype)
        return token.unsqueeze(1)

    def append_to(self, text_emb: torch.Tensor, id_emb: torch.Tensor) -> torch.Tensor:
        """[c; c'] : (B, n, k) -> (B, n+1, k), in text_emb's dtype."""
        return torch.cat([text_emb, self(id_emb).to(text_emb.dtype)], dim=1)
