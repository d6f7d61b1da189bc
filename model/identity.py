"""Identity token (paper §3.2, Eq. 4): c' = lambda * MLP(c_id) + e(anchor), a word of the prompt.

c' lives in the text encoder's *input* (token) embedding space: it is the input embedding of a
placeholder token written in the prompt, and the frozen text encoder runs over it, so the
placeholder's own state and every later state (CLIP is causal) see the identity, and gradients
reach the MLP through the frozen encoder. This is what the released code does with its `*`
token anchored on "person"; the paper anchors on "Face". Anchoring starts the token at a word the
encoder knows; the small lambda (1e-2) keeps the learned offset a gentle shift around it.

Prompts (`IdentityPrompt`): a G2 prompt holds the placeholder where the user wrote it, or else
gets it from the template (default "{placeholder} {prompt}": first, so truncation of long prompts
never drops it and every word can read the identity). What carries no identity, by design:
G1 prompts (the placeholder, if written, becomes the anchor word), the classifier-free-guidance
unconditional branch (the negative prompt, plain) and dropped training captions ("", plain).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

# Version of the identity conditioning saved in dense_face.json. 1 (no field): c' appended after the
# text encoder; 2: c' is the input embedding of a placeholder token that goes through the encoder.
IDENTITY_FORMAT = 2


def word_token_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


@torch.no_grad()
def word_embedding(text_encoder: nn.Module, tokenizer, word: str = "face") -> torch.Tensor:
    """Frozen input-token embedding of `word` (k,), mean over its BPE tokens if it splits."""
    ids = word_token_ids(tokenizer, word)
    if not ids:
        raise ValueError(f"tokenizer gives no token for {word!r}")
    table = text_encoder.get_input_embeddings().weight
    return table[torch.tensor(ids, device=table.device)].float().mean(0).detach().cpu()


def placeholder_token_id(tokenizer, placeholder: str) -> int:
    """The one token id of `placeholder`; it must be a single token so it marks one position."""
    ids = word_token_ids(tokenizer, placeholder)
    if len(ids) != 1:
        raise ValueError(f"identity placeholder {placeholder!r} must be one token of the tokenizer, got {len(ids)}")
    return ids[0]


@dataclass(frozen=True)
class IdentityPrompt:
    """Where the identity token goes in a prompt (module docstring)."""

    placeholder: str = "*"
    template: str = "{placeholder} {prompt}"
    anchor_word: str = "face"

    def __post_init__(self) -> None:
        if "{placeholder}" not in self.template or "{prompt}" not in self.template:
            raise ValueError(f"identity prompt template must contain {{placeholder}} and {{prompt}}: {self.template!r}")

    def with_identity(self, prompt: str, has_placeholder: bool) -> str:
        """G2 prompt: as written when it holds the placeholder token, else through the template."""
        if has_placeholder:
            return prompt
        return self.template.format(placeholder=self.placeholder, prompt=prompt).strip()

    def without_identity(self, prompt: str) -> str:
        """G1 / unconditional prompt: a written placeholder reads as the anchor word."""
        return prompt.replace(self.placeholder, self.anchor_word)


PROJECTORS = ("mlp", "linear_bn")


class IdentityMLP(nn.Module):
    """Maps identity embeddings (B, d) to identity tokens c' (B, k) in the input embedding space.

    `projector`: "mlp" (Linear, GELU, Linear: the paper's MLP) or "linear_bn" (a Linear without
    bias then BatchNorm1d with running statistics: the released code's `projector` + `projector_norm`).
    """

    def __init__(
        self,
        anchor_embedding: torch.Tensor,
        id_dim: int = 512,
        hidden_dim: int = 1024,
        scale: float = 1e-2,
        projector: str = "mlp",
    ) -> None:
        """`anchor_embedding`: e(anchor word), shape (k,), k = text-encoder width; id_dim 128 dlib / 512 ArcFace."""
        super().__init__()
        if anchor_embedding.ndim != 1:
            raise ValueError(f"anchor_embedding must be (k,), got {tuple(anchor_embedding.shape)}")
        if projector not in PROJECTORS:
            raise ValueError(f"identity projector must be one of {PROJECTORS}, got {projector!r}")
        k = anchor_embedding.shape[0]
        self.id_dim, self.scale = id_dim, scale
        if projector == "mlp":
            self.mlp = nn.Sequential(nn.Linear(id_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, k))
        else:
            self.mlp = nn.Sequential(nn.Linear(id_dim, k, bias=False), nn.BatchNorm1d(k))
        self.register_buffer("anchor_embedding", anchor_embedding.detach().clone().float())

    def forward(self, id_emb: torch.Tensor) -> torch.Tensor:
        if id_emb.ndim != 2 or id_emb.shape[1] != self.id_dim:
            raise ValueError(f"id_emb must be (B, {self.id_dim}), got {tuple(id_emb.shape)}")
        dtype = self.mlp[0].weight.dtype
        return self.scale * self.mlp(id_emb.to(dtype)) + self.anchor_embedding.to(dtype)


@contextmanager
def placeholder_replaced(text_encoder: nn.Module, placeholder_id: int, tokens: torch.Tensor) -> Iterator[None]:
    """While open, the text encoder's input embedding of `placeholder_id` in row b is tokens[b].

    A forward hook on the token-embedding table: the rest of the encoder (positions, causal
    attention, final norm) runs unchanged, and autograd reaches `tokens` through it.
    """

    def replace(_module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        ids = args[0]
        at = (ids == placeholder_id).unsqueeze(-1)
        return torch.where(at, tokens[:, None, :].to(out.dtype), out)

    handle = text_encoder.get_input_embeddings().register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()
