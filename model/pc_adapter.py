"""PC-adapter (paper §3.2, Eq. 6): trainable q', k', v' residual projections in every cross-attention.

q = W_q f + W'_q f,  k = (W_k + W'_k)[c; c'],  v = (W_v + W'_v)[c; c'].  W' starts at zero, so at
init G2 attention equals SD's. Options reproduce the released code's variant: adapters on self- as
well as cross-attention (`layers="all"`), the residuals scaled by `scale` (0.01 there), and the query
residual taken from the identity, W'_q(F(c_id)) with F = `feat_to_q`, the same at every pixel
(`query_from_identity`; the mid block's layers keep W'_q f, as they get no c_id there). Why a
processor that is *not* an nn.Module: the adapter weights live in the returned `PCAdapter` (owned
by DenseFace), so the frozen UNet's parameters and state_dict stay exactly SD's, and mode G1 simply
calls the UNet's original processor (bit-identical to plain SD).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention
from torch import nn


class PCAdapterProjections(nn.Module):
    """The three zero-initialised residual projections of one cross-attention layer."""

    def __init__(self, query_dim: int, cross_dim: int, inner_dim: int, kv_inner_dim: int | None = None,
                 id_dim: int | None = None) -> None:
        """`id_dim`: also a `feat_to_q` (c_id -> a query-sized feature), for the identity query path."""
        super().__init__()
        kv_inner_dim = inner_dim if kv_inner_dim is None else kv_inner_dim
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(cross_dim, kv_inner_dim, bias=False)
        self.to_v = nn.Linear(cross_dim, kv_inner_dim, bias=False)
        for lin in (self.to_q, self.to_k, self.to_v):
            nn.init.zeros_(lin.weight)
        self.feat_to_q = nn.Linear(id_dim, query_dim, bias=False) if id_dim else None

    @staticmethod
    def _delta(lin: nn.Linear, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        # Adapters may train in fp32 next to an fp16 UNet: compute in the adapter dtype, add in the UNet's.
        return lin(x.to(lin.weight.dtype)).to(like.dtype)


class PCAdapterAttnProcessor:
    """Cross-attention processor with a run-time switch: off = original processor, on = Eq. 6."""

    def __init__(self, original: Any, proj: PCAdapterProjections, scale: float = 1.0) -> None:
        self.original = original
        self.proj = proj
        self.scale = scale
        self.enabled = False
        self.identity: torch.Tensor | None = None  # c_id (B, id_dim) for the feat_to_q path, set by each G2 forward

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if not self.enabled:  # G1: exactly the plain SD path
            if temb is not None:
                kwargs["temb"] = temb
            return self.original(
                attn, hidden_states, *args,
                encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, **kwargs,
            )
        return self._adapted(attn, hidden_states, encoder_hidden_states, attention_mask, temb)

    def _adapted(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        temb: torch.Tensor | None,
    ) -> torch.Tensor:
        """diffusers' AttnProcessor2_0 with q/k/v replaced by q + dq, k + dk, v + dv."""
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        p, s = self.proj, self.scale
        query = attn.to_q(hidden_states)
        query_source = hidden_states
        if p.feat_to_q is not None:
            if self.identity is None:
                raise ValueError("this PC-adapter takes its query from the identity: pass id_emb to DenseFace.forward")
            query_source = p.feat_to_q(self.identity.to(p.feat_to_q.weight.dtype))[:, None, :]  # every pixel
        query = query + s * p._delta(p.to_q, query_source, query)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        key = key + s * p._delta(p.to_k, encoder_hidden_states, key)
        value = attn.to_v(encoder_hidden_states)
        value = value + s * p._delta(p.to_v, encoder_hidden_states, value)

        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        hidden_states = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
        )
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class PCAdapter(nn.ModuleDict):
    """All adapter projections (keyed by layer name, '.' -> '_') plus the processors that use them."""

    def __init__(self, projections: dict[str, PCAdapterProjections], processors: list[PCAdapterAttnProcessor]) -> None:
        super().__init__(projections)
        self._processors = processors

    @property
    def enabled(self) -> bool:
        return bool(self._processors) and self._processors[0].enabled

    def set_enabled(self, enabled: bool) -> None:
        """G2 (True) / G1 (False), switchable at any time, e.g. between denoising steps."""
        for proc in self._processors:
            proc.enabled = enabled

    @property
    def takes_identity(self) -> bool:
        return any(proc.proj.feat_to_q is not None for proc in self._processors)

    def set_identity(self, id_emb: torch.Tensor) -> None:
        """c_id for the layers whose query comes from the identity."""
        for proc in self._processors:
            proc.identity = id_emb


def _is_cross_attention(name: str, attn: Attention) -> bool:
    return name.endswith("attn2") or bool(getattr(attn, "is_cross_attention", False))


def install_pc_adapter(unet: nn.Module, layers: str = "cross", scale: float = 1.0,
                       id_dim: int | None = None) -> PCAdapter:
    """Wrap every cross-attention processor of `unet` (`layers="all"`: self-attention too).

    `scale` multiplies the residuals; `id_dim` gives the layers outside the mid block a `feat_to_q`
    (the query from c_id). Returns the adapter (disabled, i.e. G1); its parameters are the only new
    trainable weights.
    """
    if layers not in ("cross", "all"):
        raise ValueError(f"PC-adapter layers must be 'cross' or 'all', got {layers!r}")
    projections: dict[str, PCAdapterProjections] = {}
    processors: list[PCAdapterAttnProcessor] = []
    for name, module in unet.named_modules():
        if not isinstance(module, Attention) or (layers == "cross" and not _is_cross_attention(name, module)):
            continue
        if isinstance(module.processor, PCAdapterAttnProcessor):
            raise RuntimeError(f"PC-adapter already installed on {name}; call remove_pc_adapter first")
        ref = module.to_q.weight
        proj = PCAdapterProjections(
            query_dim=module.to_q.in_features,
            cross_dim=module.to_k.in_features,
            inner_dim=module.to_q.out_features,
            kv_inner_dim=module.to_k.out_features,
            id_dim=None if name.startswith("mid_block.") else id_dim,
        ).to(device=ref.device)
        proc = PCAdapterAttnProcessor(module.processor, proj, scale)
        module.set_processor(proc)
        projections[name.replace(".", "_")] = proj
        processors.append(proc)
    if not processors:
        raise ValueError("install_pc_adapter: the UNet has no "
                         f"{'attention' if layers == 'all' else 'cross-attention'} layers")
    return PCAdapter(projections, processors)


def remove_pc_adapter(unet: nn.Module) -> None:
    """Restore the original processors (undo install_pc_adapter)."""
    for module in unet.modules():
        if isinstance(module, Attention) and isinstance(module.processor, PCAdapterAttnProcessor):
            module.set_processor(module.processor.original)
