"""Dense-Face (paper §3): frozen SD UNet + pose branch + identity token + PC-adapters + dense heads.

Two modes switchable per call: "G1" = text-editing mode, exactly the plain SD UNet (branch, adapters,
identity token and heads off); "G2" = face-generation mode (all on). The identity enters through the
text condition (`encode_text`, see identity.py), so forward takes the already encoded condition.
Only the new modules train; only they are saved (safetensors + a json config with the identity
format version), so a checkpoint is small and SD stays shared.

Start: with the default zero-initialised pose-branch outputs and zero PC-adapters, an untrained G2
is G1 on the prompt with the identity token (the anchor word plus lambda * MLP(c_id)).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .dense_heads import DenseHeads
from .identity import (
    IDENTITY_FORMAT,
    IdentityMLP,
    IdentityPrompt,
    placeholder_replaced,
    placeholder_token_id,
    word_embedding,
)
from .pc_adapter import PCAdapter, install_pc_adapter
from .pose_branch import PoseBranch
from .tiny_sd import SDComponents, token_ids

Mode = Literal["G1", "G2"]
WEIGHTS_NAME = "dense_face.safetensors"
CONFIG_NAME = "dense_face.json"
TRAINABLE = ("pose_branch", "identity", "pc_adapter", "dense_heads")


@dataclass
class DenseFaceConfig:
    """Sizes of the new modules; saved next to the weights so a checkpoint rebuilds itself."""

    id_dim: int = 512  # 512 ArcFace, 128 dlib
    id_hidden: int = 1024
    id_scale: float = 1e-2  # lambda in Eq. 4
    id_projector: str = "mlp"  # "mlp" (paper) | "linear_bn" (released code: Linear without bias + BatchNorm1d)
    anchor_word: str = "face"  # the paper's "Face"; the released code anchors on "person"
    placeholder: str = "*"  # the identity token's word in prompts (one token of the tokenizer)
    prompt_template: str = "{placeholder} {prompt}"  # where the placeholder goes when a prompt lacks it
    zero_conv: bool = True  # pose-branch outputs through zero-initialised 1x1 convs; False: the paper's raw features
    pose_attention: bool = True  # False: the released code's attention-free pose branch (no text input)
    adapter_layers: str = "cross"  # "cross" (paper) | "all": self-attention too (released code)
    adapter_scale: float = 1.0  # the released code scales the adapter residuals by 0.01
    adapter_query_from_identity: bool = False  # released code: q residual = W'_q(feat_to_q(c_id)) outside the mid block
    pose_embed_channels: tuple[int, ...] = (16, 32, 96, 256)  # 4 entries -> pose image 8x latent
    head_blocks: tuple[int, ...] | None = None  # UNet up blocks feeding the heads; None = all
    head_hidden: int = 128
    head_out_size: int | None = None  # None = largest up-block size = latent size
    n_landmarks: int = 478
    n_mask_classes: int = 10
    extra: dict = field(default_factory=dict)  # free-form notes (e.g. identity backend)

    @classmethod
    def from_dict(cls, d: dict) -> "DenseFaceConfig":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        for k in ("pose_embed_channels", "head_blocks"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)


def freeze(*modules: nn.Module | None) -> None:
    """requires_grad False and eval mode for frozen SD parts."""
    for m in modules:
        if m is not None:
            m.requires_grad_(False)
            m.eval()


class DenseFace(nn.Module):
    """encode_text(prompts, id_emb) -> condition; forward(noisy_latents, t, condition, pose_image, mode).

    The UNet is used in place: its cross-attention processors are wrapped (G1 calls the originals)
    and hooks on its up blocks feed the heads. The frozen text encoder and tokenizer make the
    condition; the vae is an optional passenger (frozen).
    """

    def __init__(
        self,
        unet: nn.Module,
        text_encoder: nn.Module,
        tokenizer,
        config: DenseFaceConfig | None = None,
        vae: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.config = config = config or DenseFaceConfig()
        self.unet, self.text_encoder, self.tokenizer, self.vae = unet, text_encoder, tokenizer, vae
        self.freeze()
        self.prompts = IdentityPrompt(config.placeholder, config.prompt_template, config.anchor_word)
        self.placeholder_id = placeholder_token_id(tokenizer, config.placeholder)
        self.pose_branch = PoseBranch(unet, zero_conv=config.zero_conv, attention=config.pose_attention,
                                      pose_embed_channels=config.pose_embed_channels)
        anchor = word_embedding(text_encoder, tokenizer, config.anchor_word)
        self.identity = IdentityMLP(anchor, id_dim=config.id_dim, hidden_dim=config.id_hidden, scale=config.id_scale,
                                    projector=config.id_projector)
        self.pc_adapter: PCAdapter = install_pc_adapter(
            unet, config.adapter_layers, config.adapter_scale,
            config.id_dim if config.adapter_query_from_identity else None)
        self.dense_heads = DenseHeads.for_unet(
            unet, config.head_blocks, n_landmarks=config.n_landmarks, n_mask_classes=config.n_mask_classes,
            hidden=config.head_hidden, out_size=config.head_out_size,
        )
        device = next(unet.parameters()).device
        for name in TRAINABLE:
            getattr(self, name).to(device)
        self.set_mode("G1")

    @classmethod
    def from_sd(cls, sd: SDComponents, config: DenseFaceConfig | None = None) -> "DenseFace":
        """Build on loaded SD components; e(anchor word) comes from the frozen text encoder."""
        return cls(sd.unet, sd.text_encoder, sd.tokenizer, config, vae=sd.vae)

    # ---- freezing and trainable parts -------------------------------------------------------
    def freeze(self) -> None:
        """Freeze SD (unet, text encoder, vae): no grads, eval mode."""
        freeze(self.unet, self.text_encoder, self.vae)

    def train(self, mode: bool = True) -> "DenseFace":
        super().train(mode)
        freeze(self.unet, self.text_encoder, self.vae)  # SD stays in eval mode
        return self

    def trainable_modules(self) -> nn.ModuleDict:
        """The new modules, keyed as in the saved checkpoint."""
        return nn.ModuleDict({name: getattr(self, name) for name in TRAINABLE})

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.trainable_modules().parameters() if p.requires_grad]

    # ---- modes ------------------------------------------------------------------------------
    @property
    def mode(self) -> Mode:
        """Mode of the bare UNet's cross-attention outside forward (G1 unless set_mode("G2"))."""
        return "G2" if self.pc_adapter.enabled else "G1"

    def set_mode(self, mode: Mode) -> None:
        """Switch the bare UNet's cross-attention between plain SD (G1) and PC-adapted (G2).

        forward() sets the mode it is asked for and restores this one afterwards.
        """
        if mode not in ("G1", "G2"):
            raise ValueError(f"mode must be 'G1' or 'G2', got {mode!r}")
        self.pc_adapter.set_enabled(mode == "G2")

    # ---- text condition ------------------------------------------------------------------------
    def prompt_for(self, prompt: str, identity: bool) -> str:
        """The prompt with the identity placeholder (G2 condition) or without it (G1, CFG unconditional)."""
        if not identity:
            return self.prompts.without_identity(prompt)
        ids = self.tokenizer(prompt).input_ids  # untruncated: a placeholder past the end would be lost
        if self.placeholder_id not in ids:
            return self.prompts.with_identity(prompt, has_placeholder=False)
        if ids.index(self.placeholder_id) >= self.tokenizer.model_max_length - 1:
            raise ValueError(f"the identity placeholder {self.config.placeholder!r} comes after the text encoder's "
                             f"{self.tokenizer.model_max_length} tokens and would be cut off; put it earlier")
        return self.prompts.with_identity(prompt, has_placeholder=True)

    def encode_text(self, prompts: list[str], id_emb: torch.Tensor | None = None) -> torch.Tensor:
        """Condition (B, n, k): the frozen text encoder's last hidden state of `prompts` (from
        `prompt_for`), the placeholder's input embedding being c' of that row's `id_emb` (B, id_dim).

        Differentiable in the identity MLP (no_grad is the caller's choice). Whenever `id_emb` is
        given, c' is in the graph (rows without the placeholder take a zero gradient), so a batch of
        dropped captions still gives every trained parameter a gradient, as DDP requires.
        """
        ids = token_ids(self.tokenizer, prompts).to(self.text_encoder.device)
        if id_emb is None:
            if bool((ids == self.placeholder_id).any()):
                raise ValueError(f"a prompt holds the identity placeholder {self.config.placeholder!r} "
                                 "but no id_emb was given")
            return self.text_encoder(ids)[0]
        with placeholder_replaced(self.text_encoder, self.placeholder_id, self.identity(id_emb.to(ids.device))):
            return self.text_encoder(ids)[0]

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor | int,
        text_emb: torch.Tensor,
        pose_image: torch.Tensor | None = None,
        mode: Mode = "G2",
        return_dense: bool = True,
        id_emb: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """noisy_latents (B,4,h,w), text_emb (B,n,k) from `encode_text` (with c_id in G2),
        pose_image (B,3,8h,8w) in [0,1]; id_emb (B, id_dim) only for `adapter_query_from_identity`.

        Returns eps (B,4,h,w) and, in G2, dense = {"landmarks": (B,478,H,W), "mask": (B,10,H,W) logits,
        "depth": (B,1,H,W)} with H = W = head_out_size or h.
        """
        if mode not in ("G1", "G2"):
            raise ValueError(f"mode must be 'G1' or 'G2', got {mode!r}")
        if mode == "G2" and pose_image is None:
            raise ValueError("mode G2 needs pose_image")
        if mode == "G2" and self.pc_adapter.takes_identity and id_emb is None:
            raise ValueError("this model's PC-adapter takes its query from the identity (adapter_query_from_identity): "
                             "G2 needs id_emb")
        previous = self.mode
        try:  # the mode holds for this call only; the bare UNet keeps whatever set_mode chose
            self.set_mode(mode)
            if mode == "G1":
                return self.unet(noisy_latents, timesteps, encoder_hidden_states=text_emb).sample, None
            down, mid = self.pose_branch(noisy_latents, timesteps, text_emb, pose_image)
            dtype = self.unet.dtype
            self.dense_heads.capturing = return_dense
            if self.pc_adapter.takes_identity:  # kept after the call: gradient checkpointing recomputes in backward
                self.pc_adapter.set_identity(id_emb)
            eps = self.unet(
                noisy_latents,
                timesteps,
                encoder_hidden_states=text_emb,
                down_block_additional_residuals=[r.to(dtype) for r in down],
                mid_block_additional_residual=mid.to(dtype),
            ).sample
        finally:
            self.dense_heads.capturing = False
            self.set_mode(previous)
        return eps, (self.dense_heads() if return_dense else None)

    # ---- checkpoints of the trained modules only ---------------------------------------------
    def save_trained(self, directory: str | Path, metadata: dict | None = None) -> Path:
        """Write dense_face.safetensors (new modules only) and dense_face.json (config)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.trainable_modules().state_dict().items()}
        save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
        info = {
            "format": IDENTITY_FORMAT,
            "config": asdict(self.config),
            "unet": {k: self.unet.config[k] for k in ("block_out_channels", "cross_attention_dim", "sample_size")},
            "metadata": metadata or {},
        }
        (directory / CONFIG_NAME).write_text(json.dumps(info, indent=2, default=list))
        return directory

    @staticmethod
    def read_config(directory: str | Path) -> DenseFaceConfig:
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"Dense-Face checkpoint config not found: {path} "
                                    "(written by DenseFace.save_trained)")
        info = json.loads(path.read_text())
        if info.get("format", 1) != IDENTITY_FORMAT:
            raise ValueError(
                f"Dense-Face checkpoint {directory} has identity format {info.get('format', 1)}, this version reads "
                f"format {IDENTITY_FORMAT}: its identity MLP was trained for a token appended after the text encoder, "
                "which no longer exists (the token now goes through the encoder); retrain it with `denseface train`")
        return DenseFaceConfig.from_dict(info["config"])

    def load_trained(self, directory: str | Path, strict: bool = True) -> None:
        """Load weights written by save_trained into the new modules (SD untouched)."""
        path = Path(directory) / WEIGHTS_NAME
        if not path.is_file():
            raise FileNotFoundError(f"Dense-Face weights not found: {path} (written by DenseFace.save_trained)")
        saved = self.read_config(directory)
        if asdict(saved) != asdict(self.config):
            raise ValueError(f"checkpoint config {saved} differs from this model's {self.config}; "
                             "use DenseFace.from_trained")
        self.trainable_modules().load_state_dict(load_file(str(path), device=str(self.unet.device)), strict=strict)

    @classmethod
    def from_trained(cls, sd: SDComponents, directory: str | Path) -> "DenseFace":
        """Rebuild from SD components plus a save_trained folder."""
        model = cls.from_sd(sd, cls.read_config(directory))
        model.load_trained(directory)
        return model
