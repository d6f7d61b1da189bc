"""CodeFormer (Zhou et al., "Towards Robust Blind Face Restoration with Codebook Lookup
Transformer", NeurIPS 2022), pure torch, for the restoration stage.

The paper restores the CASIA / CelebA faces with CodeFormer before annotating them. This is
the network of sczhou/CodeFormer (``basicsr/archs/vqgan_arch.py`` + ``codeformer_arch.py``)
rewritten without basicsr, with the SAME module and parameter names, so the published
``codeformer.pth`` (its ``params_ema`` entry) loads with ``strict=True``:

* ``encoder.blocks.*`` / ``generator.blocks.*``: the VQGAN encoder and generator (ResBlock,
  AttnBlock, Downsample, Upsample, GroupNorm(32) and the in/out convolutions);
* ``quantize.embedding``: the 1024 x 256 codebook;
* ``position_emb`` (256 x 512), ``feat_emb``, ``ft_layers.*`` (9 pre-norm self-attention
  layers, 8 heads, MLP 1024), ``idx_pred_layer`` (LayerNorm + code logits);
* ``fuse_convs_dict.{32,64,128,256}``: the controllable feature transformation (SFT) that
  blends encoder features into the generator with fidelity weight ``w``.

The sizes the official code hardcodes (image 512, nf 64, channel multipliers
[1, 2, 2, 4, 4, 8], two residual blocks a level, attention at 16 px, 256-d codes, the
per-resolution channel table and the fuse block indices) are constructor arguments here;
their defaults reproduce the official values exactly (the fuse indices are derived from the
block layout and equal the official tables for the defaults). Small sizes are only for tests.

Conventions as in the official ``inference_codeformer.py``: RGB input normalised as
``(x / 255 - 0.5) / 0.5`` of a 512 x 512 FFHQ-aligned face; ``forward(x, w, adain=True)``
gives the restored face in [-1, 1]. `image_to_tensor` / `tensor_to_image` convert.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_HELP = (
    "CodeFormer weights are not bundled: download codeformer.pth from the CodeFormer GitHub "
    "release v0.1.0 (https://github.com/sczhou/CodeFormer/releases/download/v0.1.0/codeformer.pth) "
    "and point the restore stage's weights path at it, or use the offline 'none' backend."
)
DEFAULT_ARCH: dict = dict(dim_embd=512, n_head=8, n_layers=9, codebook_size=1024, latent_size=256,
                          connect_list=("32", "64", "128", "256"), img_size=512, nf=64,
                          ch_mult=(1, 2, 2, 4, 4, 8), res_blocks=2, attn_resolutions=(16,), emb_dim=256,
                          norm_groups=32)


# ---- VQGAN building blocks (vqgan_arch.py) --------------------------------------------

def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


class Downsample(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))


class Upsample(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int | None = None, norm_groups: int = 32) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.norm1 = _norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, self.out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = _norm(self.out_channels, norm_groups)
        self.conv2 = nn.Conv2d(self.out_channels, self.out_channels, kernel_size=3, stride=1, padding=1)
        if self.in_channels != self.out_channels:
            self.conv_out = nn.Conv2d(in_channels, self.out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        x = self.conv1(F.silu(self.norm1(x_in)))  # swish = x * sigmoid(x)
        x = self.conv2(F.silu(self.norm2(x)))
        if self.in_channels != self.out_channels:
            x_in = self.conv_out(x_in)
        return x + x_in


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1 q/k/v/proj_out convolutions."""

    def __init__(self, in_channels: int, norm_groups: int = 32) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.norm = _norm(in_channels, norm_groups)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        q = q.reshape(b, c, hh * ww).permute(0, 2, 1)  # b, hw, c
        k = k.reshape(b, c, hh * ww)  # b, c, hw
        attn = torch.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)  # b, hw(q), hw(k)
        v = v.reshape(b, c, hh * ww)
        h = torch.bmm(v, attn.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(h)


class _BlockStack(nn.Module):
    """``blocks`` applied in order (the official Encoder/Generator layout and key names)."""

    blocks: nn.ModuleList

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class Encoder(_BlockStack):
    """``blocks``: conv_in, per level ``res_blocks`` ResBlocks (+AttnBlock at attention
    resolutions) and a Downsample (not after the last), then Res/Attn/Res, GroupNorm, conv
    to ``emb_dim``. ``fuse_index[res]`` is the block whose output feeds the SFT fusion: the
    last ResBlock of that level."""

    def __init__(self, in_channels: int, nf: int, emb_dim: int, ch_mult: Sequence[int], num_res_blocks: int,
                 resolution: int, attn_resolutions: Sequence[int], norm_groups: int = 32) -> None:
        super().__init__()
        curr_res = resolution
        in_ch_mult = (1, *ch_mult)
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, nf, kernel_size=3, stride=1, padding=1)]
        self.fuse_index: dict[str, int] = {}
        block_in_ch = nf
        for i in range(len(ch_mult)):
            block_in_ch, block_out_ch = nf * in_ch_mult[i], nf * ch_mult[i]
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(block_in_ch, block_out_ch, norm_groups))
                self.fuse_index[str(curr_res)] = len(blocks) - 1
                block_in_ch = block_out_ch
                if curr_res in attn_resolutions:
                    blocks.append(AttnBlock(block_in_ch, norm_groups))
            if i != len(ch_mult) - 1:
                blocks.append(Downsample(block_in_ch))
                curr_res //= 2
        blocks += [ResBlock(block_in_ch, block_in_ch, norm_groups), AttnBlock(block_in_ch, norm_groups),
                   ResBlock(block_in_ch, block_in_ch, norm_groups), _norm(block_in_ch, norm_groups),
                   nn.Conv2d(block_in_ch, emb_dim, kernel_size=3, stride=1, padding=1)]
        self.blocks = nn.ModuleList(blocks)

class Generator(_BlockStack):
    """Mirror of the encoder from the ``emb_dim`` codes to RGB. ``fuse_index[res]``: the
    block after which the SFT fusion applies: the first ResBlock of a level, or the last one
    on a level with attention (the official table: 16->6, 32->9, ..., 512->21)."""

    def __init__(self, nf: int, emb_dim: int, ch_mult: Sequence[int], res_blocks: int, img_size: int,
                 attn_resolutions: Sequence[int], norm_groups: int = 32) -> None:
        super().__init__()
        block_in_ch = nf * ch_mult[-1]
        curr_res = img_size // 2 ** (len(ch_mult) - 1)
        blocks: list[nn.Module] = [
            nn.Conv2d(emb_dim, block_in_ch, kernel_size=3, stride=1, padding=1),
            ResBlock(block_in_ch, block_in_ch, norm_groups), AttnBlock(block_in_ch, norm_groups),
            ResBlock(block_in_ch, block_in_ch, norm_groups),
        ]
        self.fuse_index: dict[str, int] = {}
        for i in reversed(range(len(ch_mult))):
            block_out_ch = nf * ch_mult[i]
            for j in range(res_blocks):
                blocks.append(ResBlock(block_in_ch, block_out_ch, norm_groups))
                if j == 0 or curr_res in attn_resolutions:
                    self.fuse_index[str(curr_res)] = len(blocks) - 1
                block_in_ch = block_out_ch
                if curr_res in attn_resolutions:
                    blocks.append(AttnBlock(block_in_ch, norm_groups))
            if i != 0:
                blocks.append(Upsample(block_in_ch))
                curr_res *= 2
        blocks += [_norm(block_in_ch, norm_groups), nn.Conv2d(block_in_ch, 3, kernel_size=3, stride=1, padding=1)]
        self.blocks = nn.ModuleList(blocks)

class VectorQuantizer(nn.Module):
    """The codebook (``embedding``: codebook_size x emb_dim); CodeFormer only looks codes up."""

    def __init__(self, codebook_size: int, emb_dim: int, beta: float = 0.25) -> None:
        super().__init__()
        self.codebook_size, self.emb_dim, self.beta = codebook_size, emb_dim, beta
        self.embedding = nn.Embedding(codebook_size, emb_dim)
        self.embedding.weight.data.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)

    def get_codebook_feat(self, indices: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """Codes (B, HW[, 1]) -> features (B, emb_dim, H, W); ``shape`` = (B, H, W, emb_dim).
        A row lookup: exactly the official one-hot matmul's result."""
        z_q = self.embedding.weight[indices.reshape(-1)]
        return z_q.view(*shape).permute(0, 3, 1, 2).contiguous()


class VQAutoEncoder(nn.Module):
    def __init__(self, img_size: int = 512, nf: int = 64, ch_mult: Sequence[int] = (1, 2, 2, 4, 4, 8),
                 res_blocks: int = 2, attn_resolutions: Sequence[int] = (16,), codebook_size: int = 1024,
                 emb_dim: int = 256, beta: float = 0.25, norm_groups: int = 32) -> None:
        super().__init__()
        self.in_channels = 3
        self.nf, self.n_blocks, self.codebook_size, self.embed_dim = nf, res_blocks, codebook_size, emb_dim
        self.ch_mult, self.resolution, self.attn_resolutions = tuple(ch_mult), img_size, tuple(attn_resolutions)
        self.encoder = Encoder(3, nf, emb_dim, ch_mult, res_blocks, img_size, attn_resolutions, norm_groups)
        self.quantize = VectorQuantizer(codebook_size, emb_dim, beta)
        self.generator = Generator(nf, emb_dim, ch_mult, res_blocks, img_size, attn_resolutions, norm_groups)


# ---- CodeFormer (codeformer_arch.py) --------------------------------------------------

def calc_mean_std(feat: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    b, c = feat.shape[:2]
    std = (feat.reshape(b, c, -1).var(dim=2) + eps).sqrt().view(b, c, 1, 1)  # unbiased, as official
    mean = feat.reshape(b, c, -1).mean(dim=2).view(b, c, 1, 1)
    return mean, std


def adaptive_instance_normalization(content_feat: torch.Tensor, style_feat: torch.Tensor) -> torch.Tensor:
    """Give the looked-up codes the channel statistics (colour, illumination) of the input's."""
    style_mean, style_std = calc_mean_std(style_feat)
    content_mean, content_std = calc_mean_std(content_feat)
    return (content_feat - content_mean) / content_std * style_std + style_mean


class TransformerSALayer(nn.Module):
    """Pre-norm self-attention layer, sequence-first (HW, B, C), GELU MLP."""

    def __init__(self, embed_dim: int, nhead: int = 8, dim_mlp: int = 2048, dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(embed_dim, nhead, dropout=dropout)
        self.linear1 = nn.Linear(embed_dim, dim_mlp)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_mlp, embed_dim)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor | None = None) -> torch.Tensor:
        tgt2 = self.norm1(tgt)
        q = k = tgt2 if query_pos is None else tgt2 + query_pos
        tgt = tgt + self.dropout1(self.self_attn(q, k, value=tgt2, need_weights=False)[0])
        tgt2 = self.linear2(self.dropout(F.gelu(self.linear1(self.norm2(tgt)))))
        return tgt + self.dropout2(tgt2)


class Fuse_sft_block(nn.Module):  # noqa: N801 - the official name
    """Controllable feature transformation: dec + w * (dec * scale + shift)."""

    def __init__(self, in_ch: int, out_ch: int, norm_groups: int = 32) -> None:
        super().__init__()
        self.encode_enc = ResBlock(2 * in_ch, out_ch, norm_groups)
        self.scale = nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1), nn.LeakyReLU(0.2, True),
                                   nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1))
        self.shift = nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1), nn.LeakyReLU(0.2, True),
                                   nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1))

    def forward(self, enc_feat: torch.Tensor, dec_feat: torch.Tensor, w: float = 1.0) -> torch.Tensor:
        enc_feat = self.encode_enc(torch.cat([enc_feat, dec_feat], dim=1))
        return dec_feat + w * (dec_feat * self.scale(enc_feat) + self.shift(enc_feat))


class CodeFormer(VQAutoEncoder):
    """CodeFormer for inference. Defaults = the published model (``DEFAULT_ARCH``)."""

    def __init__(self, dim_embd: int = 512, n_head: int = 8, n_layers: int = 9, codebook_size: int = 1024,
                 latent_size: int | None = 256, connect_list: Sequence[str] = ("32", "64", "128", "256"),
                 img_size: int = 512, nf: int = 64, ch_mult: Sequence[int] = (1, 2, 2, 4, 4, 8),
                 res_blocks: int = 2, attn_resolutions: Sequence[int] = (16,), emb_dim: int = 256,
                 norm_groups: int = 32) -> None:
        super().__init__(img_size, nf, ch_mult, res_blocks, attn_resolutions, codebook_size, emb_dim,
                         norm_groups=norm_groups)
        self.latent_hw = img_size // 2 ** (len(ch_mult) - 1)
        if latent_size is None:
            latent_size = self.latent_hw ** 2
        if latent_size != self.latent_hw ** 2:
            raise ValueError(f"latent_size {latent_size} != ({img_size} / 2**{len(ch_mult) - 1})**2 = "
                             f"{self.latent_hw ** 2} tokens")
        # channels per resolution: official table {'16': 512, '32': 256, ..., '512': 64}
        self.channels = {str(img_size // 2 ** i): nf * m for i, m in enumerate(ch_mult)}
        self.fuse_encoder_block = dict(self.encoder.fuse_index)
        self.fuse_generator_block = dict(self.generator.fuse_index)
        bad = [s for s in connect_list if str(s) not in self.channels]
        if bad:
            raise ValueError(f"connect_list {list(connect_list)}: no level of size {bad}; have {list(self.channels)}")
        self.connect_list = [str(s) for s in connect_list]
        self.n_layers, self.dim_embd, self.dim_mlp = n_layers, dim_embd, dim_embd * 2
        self.position_emb = nn.Parameter(torch.zeros(latent_size, dim_embd))
        self.feat_emb = nn.Linear(emb_dim, dim_embd)
        self.ft_layers = nn.Sequential(*[TransformerSALayer(dim_embd, n_head, self.dim_mlp, 0.0)
                                         for _ in range(n_layers)])
        self.idx_pred_layer = nn.Sequential(nn.LayerNorm(dim_embd), nn.Linear(dim_embd, codebook_size, bias=False))
        self.fuse_convs_dict = nn.ModuleDict(
            {s: Fuse_sft_block(self.channels[s], self.channels[s], norm_groups) for s in self.connect_list})

    def forward_full(self, x: torch.Tensor, w: float = 0.5,
                     adain: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As the official forward: (raw generator output, code logits (B, HW, N), lq_feat)."""
        if x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (self.resolution, self.resolution):
            raise ValueError(f"CodeFormer expects (B, 3, {self.resolution}, {self.resolution}), got {tuple(x.shape)}")
        enc_at = {i: s for s, i in self.fuse_encoder_block.items() if s in self.connect_list}
        enc_feat: dict[str, torch.Tensor] = {}
        for i, block in enumerate(self.encoder.blocks):
            x = block(x)
            if i in enc_at:
                enc_feat[enc_at[i]] = x
        lq_feat = x
        b = x.shape[0]
        pos_emb = self.position_emb.unsqueeze(1).repeat(1, b, 1)
        query = self.feat_emb(lq_feat.flatten(2).permute(2, 0, 1))  # (HW, B, C)
        for layer in self.ft_layers:
            query = layer(query, query_pos=pos_emb)
        logits = self.idx_pred_layer(query).permute(1, 0, 2)  # (B, HW, N)
        _, top_idx = torch.topk(F.softmax(logits, dim=2), 1, dim=2)
        quant_feat = self.quantize.get_codebook_feat(top_idx, (b, self.latent_hw, self.latent_hw, self.embed_dim))
        quant_feat = quant_feat.to(lq_feat.dtype)
        if adain:
            quant_feat = adaptive_instance_normalization(quant_feat, lq_feat)
        gen_at = {i: s for s, i in self.fuse_generator_block.items() if s in self.connect_list}
        x = quant_feat
        for i, block in enumerate(self.generator.blocks):
            x = block(x)
            if i in gen_at and w > 0:
                x = self.fuse_convs_dict[gen_at[i]](enc_feat[gen_at[i]], x, w)
        return x, logits, lq_feat

    def forward(self, x: torch.Tensor, w: float = 0.5, adain: bool = True) -> torch.Tensor:
        """Restored faces in [-1, 1] (clamped) for normalised RGB input (B, 3, 512, 512).
        ``w`` = fidelity: 0 = codebook only (highest quality), 1 = closest to the input."""
        return self.forward_full(x, w, adain)[0].clamp(-1.0, 1.0)


# ---- loading and conversion -----------------------------------------------------------

def load_codeformer(path: str | Path, **arch) -> CodeFormer:
    """A CodeFormer in eval mode with weights from a local checkpoint (e.g. codeformer.pth).

    Takes the checkpoint's ``params_ema`` entry, else ``params``, else the dict itself; loads
    with ``strict=True`` (any missing, extra or mis-shaped key is an error naming the file).
    ``arch``: `CodeFormer` constructor arguments (defaults = the published model).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"CodeFormer weights not found at {path}. {WEIGHTS_HELP}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path} is not a CodeFormer checkpoint (a {type(ckpt).__name__}, not a state dict)")
    state = ckpt.get("params_ema", ckpt.get("params", ckpt))
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a CodeFormer checkpoint: its params entry is a {type(state).__name__}")
    net = CodeFormer(**arch)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path} is not a CodeFormer state dict for this architecture: {exc}") from exc
    return net.eval()


def image_to_tensor(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """RGB uint8 image(s) (H, W, 3) or (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]."""
    batch = np.asarray(images) if not isinstance(images, np.ndarray) else images
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[-1] != 3 or batch.dtype != np.uint8:
        raise ValueError(f"expected RGB uint8 image(s) (..., H, W, 3), got {batch.shape} {batch.dtype}")
    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
    return (x / 255.0 - 0.5) / 0.5


def tensor_to_image(t: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) or (3, H, W) in [-1, 1] -> RGB uint8 (B, H, W, 3) or (H, W, 3); clamped
    and rounded as the official ``tensor2img(min_max=(-1, 1))``."""
    single = t.ndim == 3
    t = t[None] if single else t
    x = (t.detach().float().cpu().clamp(-1.0, 1.0) + 1.0) / 2.0
    out = (x.permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)
    return out[0] if single else out
