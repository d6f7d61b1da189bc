"""`denseface import-official`: the released Dense-Face checkpoint (LDM/ControlNet layout, one file) as a
`DenseFacePipeline` folder.

Why: the only trained Dense-Face weights are the release of CHELSEA234/Dense-Face, an SD 1.x model at
256 px in the original LDM layout. The SD parts go through diffusers' own single-file conversion
(`convert_ldm_unet_checkpoint`, `convert_ldm_vae_checkpoint`, `convert_ldm_clip_checkpoint`,
`convert_controlnet_checkpoint`); only the Dense-Face keys are mapped here. Every key of the file is
consumed once or listed as dropped (`ImportReport`), so a layout we do not know fails loudly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.loaders import single_file_utils as sfu
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from denseface.errors import UserError
from denseface.model.dense_face import DenseFace, DenseFaceConfig
from denseface.model.irse50 import FACENET_PREFIX
from denseface.model.tiny_sd import SDComponents
from denseface.model_refs import require, resolve_pretrained

UNET_PREFIX = "model.diffusion_model."
CONTROL_PREFIX = "control_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
EMBEDDING_PREFIX = "embedding_manager."
ADAPTER_NAMES = {"per_q": "to_q", "per_k": "to_k", "per_v": "to_v", "feat_to_q": "feat_to_q"}
DROPPED_EXACT = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                 "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                 "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef1", "posterior_mean_coef2", "logvar", "lvlb_weights",
                 "cond_stage_model.transformer.text_model.embeddings.position_ids")
DROPPED_EMBEDDING = ("string_to_param_dict.", "initial_embeddings.", "string_to_token_dict.")  # the `*` word vector
IRSE50_FILE = "irse50.pth"
VAE_SCALE = 8
CLIP_DEFAULT = "openai/clip-vit-large-patch14"  # SD 1.x text encoder and tokenizer (config + vocabulary only)
RELEASE_SAMPLER = {"steps": 50, "eta": 1.0, "guidance": 4.0, "size": 256}
# X/Y axes 100 px, 4 px lines on a 256 canvas (white, Z twice as long: draw_pose_axes' own conventions)
RELEASE_POSE_IMAGE = {"canvas": 256, "axis_length": 100, "line_width": 4}

# The release's LDM configuration (SD 1.x v1-inference at 256 px + the attention-free control stage).
RELEASE_ORIGINAL_CONFIG = {"model": {"params": {
    "linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000, "scale_factor": 0.18215,
    "unet_config": {"params": {"image_size": 32, "in_channels": 4, "out_channels": 4, "model_channels": 320,
                               "attention_resolutions": [4, 2, 1], "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4],
                               "num_heads": 8, "use_spatial_transformer": True, "transformer_depth": 1,
                               "context_dim": 768, "use_checkpoint": True, "legacy": False}},
    "control_stage_config": {"params": {"image_size": 32, "in_channels": 4, "hint_channels": 3,
                                        "model_channels": 320, "attention_resolutions": [4, 2, 1],
                                        "num_res_blocks": 2, "channel_mult": [1, 2, 4, 4], "num_heads": 8,
                                        "use_spatial_transformer": True, "transformer_depth": 1,
                                        "context_dim": 768, "legacy": False}},
    "first_stage_config": {"params": {"embed_dim": 4, "ddconfig": {
        "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
        "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}}},
    "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder"},
}}}


@dataclass
class ImportReport:
    """Which keys of the file went where; `unused` must be empty for an import to succeed."""

    consumed: dict[str, list[str]] = field(default_factory=dict)  # part -> keys
    dropped: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = ", ".join(f"{part} {len(keys)}" for part, keys in self.consumed.items())
        return f"keys consumed: {parts}; dropped {len(self.dropped)}"


def load_official_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict of a `.ckpt` (weights_only; Lightning's "state_dict" when present) or `.safetensors`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} (the released Dense-Face .ckpt or a .safetensors of it)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not any(k.startswith(UNET_PREFIX) for k in state):
        raise UserError(f"{path} is not a Dense-Face/LDM checkpoint: no {UNET_PREFIX}* keys")
    return state


def read_original_config(path: str | Path | None) -> dict:
    """The LDM YAML (`--original-config`), or the release's configuration."""
    if path is None:
        return copy.deepcopy(RELEASE_ORIGINAL_CONFIG)
    return yaml.safe_load(Path(path).read_text())


def image_size(original: dict) -> int:
    """Image size in px of an LDM config: the UNet's latent size times the VAE's downscale."""
    params = original["model"]["params"]
    levels = len(params["first_stage_config"]["params"]["ddconfig"]["ch_mult"])
    if 2 ** (levels - 1) != VAE_SCALE:
        raise UserError(f"the LDM config's VAE downscales {2 ** (levels - 1)}x; SD 1.x (and generation here) "
                        f"uses {VAE_SCALE}x")
    return int(params["unet_config"]["params"]["image_size"]) * VAE_SCALE


def with_prefix(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def is_adapter_key(key: str) -> bool:
    """`...attnN.per_q.weight` and the like, in LDM or diffusers naming."""
    parts = key.split(".")
    return len(parts) >= 3 and parts[-2] in ADAPTER_NAMES


def split_adapter_keys(unet_state: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(plain UNet keys, PC-adapter keys) of a converted (diffusers-named) UNet state dict."""
    plain, adapter = {}, {}
    for key, value in unet_state.items():
        (adapter if is_adapter_key(key) else plain)[key] = value
    return plain, adapter


def adapter_state(adapter_keys: dict[str, torch.Tensor], has_projection) -> tuple[dict, list[str]]:
    """`pc_adapter.*` keys of DenseFace from the converted `...attnN.per_q.weight` keys; the ones our
    adapter has no slot for (the mid block's feat_to_q: it gets no c_id) come back as dropped."""
    mapped, dropped = {}, []
    for key, value in adapter_keys.items():
        layer, name, leaf = key.rsplit(".", 2)
        ours = f"pc_adapter.{layer.replace('.', '_')}.{ADAPTER_NAMES[name]}.{leaf}"
        if has_projection(ours):
            mapped[ours] = value
        else:
            dropped.append(key)
    return mapped, dropped


def convert_pose_branch(control: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers' ControlNet conversion; an attention-free middle block ([Res, Res], which diffusers would
    read as [Res, Attention]) has its second ResNet mapped as `mid_block.resnets.1`."""
    middle = sorted({int(k.split(".")[1]) for k in control if k.startswith("middle_block.")})
    attention_free = not any(".transformer_blocks." in k for k in control if k.startswith("middle_block."))
    rest = {k: v for k, v in control.items() if not (attention_free and k.startswith("middle_block."))}
    converted = sfu.convert_controlnet_checkpoint(rest, config)
    if attention_free:
        for diffusers_index, ldm_index in enumerate(middle):
            keys = [k for k in control if k.startswith(f"middle_block.{ldm_index}.")]
            sfu.update_unet_resnet_ldm_to_diffusers(keys, converted, control, mapping={
                "old": f"middle_block.{ldm_index}", "new": f"mid_block.resnets.{diffusers_index}"})
    return {k: v for k, v in converted.items() if v is not None}


def release_config(state: dict[str, torch.Tensor], embed_channels: tuple[int, ...]) -> DenseFaceConfig:
    """The options that reproduce the released architecture."""
    projector = state[EMBEDDING_PREFIX + "projector.weight"]
    return DenseFaceConfig(
        id_dim=projector.shape[1], id_projector="linear_bn", anchor_word="person", zero_conv=True,
        pose_attention=False, adapter_layers="all", adapter_scale=0.01, adapter_query_from_identity=True,
        pose_embed_channels=embed_channels,
        extra={"id_backend": "irse50", "id_weights": IRSE50_FILE, "source": "released Dense-Face checkpoint",
               "sampler": RELEASE_SAMPLER, "pose_image": RELEASE_POSE_IMAGE,
               "dense_heads": "not in the release: randomly initialised, not trained"})


def hint_embed_channels(control: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """Widths of the ControlNet hint encoder (input_hint_block's stride-2 convs and the first one)."""
    convs = sorted(int(k.split(".")[1]) for k in control if k.startswith("input_hint_block.") and k.endswith(".weight"))
    widths = [control[f"input_hint_block.{i}.weight"].shape[0] for i in convs[:-1]]
    return tuple(widths[0:1] + widths[2::2])


def import_official(ckpt: str | Path, out: str | Path, original_config: str | Path | None = None,
                    clip: str | None = None) -> ImportReport:
    """Convert `ckpt` and write a DenseFacePipeline folder to `out` (plus `irse50.pth`); `clip`: the text
    encoder's config and tokenizer (hub id or folder; None: SD 1.x's)."""
    from denseface.generation.pipeline import DENSE_FACE_FOLDER, DenseFacePipeline

    text_ref = resolve_pretrained(clip or CLIP_DEFAULT, "CLIP text encoder config and tokenizer")
    require([text_ref])  # before the checkpoint is read
    clip_source, clip_kw = text_ref.pretrained_args()
    state = load_official_state(ckpt)
    report = ImportReport()
    original = read_original_config(original_config)

    size = image_size(original)  # diffusers would assume 512 px; the release is 256
    unet_cfg = {**sfu.create_unet_diffusers_config_from_ldm(original, state), "sample_size": size // VAE_SCALE}
    unet_all = sfu.convert_ldm_unet_checkpoint(state, unet_cfg)
    unet_state, adapter_keys = split_adapter_keys(unet_all)
    unet = UNet2DConditionModel(**unet_cfg)
    unet.load_state_dict(unet_state, strict=True)
    report.consumed["unet"] = sorted(k for k in state if k.startswith(UNET_PREFIX) and not is_adapter_key(k))
    report.consumed["pc_adapter"] = sorted(k for k in state if k.startswith(UNET_PREFIX) and is_adapter_key(k))

    vae_cfg = {**sfu.create_vae_diffusers_config_from_ldm(original, state), "sample_size": size}
    vae = AutoencoderKL(**vae_cfg)
    vae.load_state_dict(sfu.convert_ldm_vae_checkpoint(state, vae_cfg), strict=True)
    report.consumed["vae"] = sorted(with_prefix(state, VAE_PREFIX))

    text_state = sfu.convert_ldm_clip_checkpoint(with_prefix(state, CLIP_PREFIX))
    text_state.pop("text_model.embeddings.position_ids", None)
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(clip_source, **clip_kw))
    text_encoder.load_state_dict(text_state, strict=False)
    missing = set(text_encoder.state_dict()) - set(text_state) - {"text_model.embeddings.position_ids"}
    if missing:
        raise UserError(f"the checkpoint's text encoder lacks {len(missing)} keys of {text_ref.ref}, "
                        f"e.g. {sorted(missing)[0]}")
    tokenizer = CLIPTokenizer.from_pretrained(clip_source, **clip_kw)
    report.consumed["text_encoder"] = sorted(k for k in with_prefix(state, CLIP_PREFIX) if k not in DROPPED_EXACT)

    scheduler = DDIMScheduler(beta_start=original["model"]["params"]["linear_start"],
                              beta_end=original["model"]["params"]["linear_end"], beta_schedule="scaled_linear",
                              num_train_timesteps=original["model"]["params"]["timesteps"], clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)

    control = {k[len(CONTROL_PREFIX):]: v for k, v in with_prefix(state, CONTROL_PREFIX).items()}
    config = release_config(state, hint_embed_channels(control))
    sd = SDComponents(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
    model = DenseFace.from_sd(sd, config)

    trained = model.trainable_modules().state_dict()
    # diffusers 0.42's create_controlnet_diffusers_config_from_ldm fails (it calls the UNet one without the
    # checkpoint); the conversion only reads the UNet-shaped fields, which the UNet config holds.
    pose = {f"pose_branch.net.{k}": v for k, v in convert_pose_branch(control, unet_cfg).items()}
    report.consumed["pose_branch"] = sorted(with_prefix(state, CONTROL_PREFIX))
    adapters, dropped_adapters = adapter_state(adapter_keys, lambda key: key in trained)
    dropped_ldm = [UNET_PREFIX + k.replace("mid_block.attentions.0.", "middle_block.1.", 1) for k in dropped_adapters]
    if not set(dropped_ldm) <= set(report.consumed["pc_adapter"]):
        raise UserError(f"adapter keys without a place in the import: {sorted(dropped_adapters)[:3]}")
    report.dropped += dropped_ldm
    report.consumed["pc_adapter"] = sorted(set(report.consumed["pc_adapter"]) - set(dropped_ldm))
    identity = {"identity.mlp.0.weight": state[EMBEDDING_PREFIX + "projector.weight"]}
    identity.update({f"identity.mlp.1.{k[len(EMBEDDING_PREFIX + 'projector_norm.'):]}": v
                     for k, v in with_prefix(state, EMBEDDING_PREFIX + "projector_norm.").items()})
    report.consumed["identity"] = sorted(k for k in with_prefix(state, EMBEDDING_PREFIX)
                                         if k.startswith(EMBEDDING_PREFIX + "projector"))
    new = {**pose, **adapters, **identity}
    expected = {k for k in trained if not k.startswith("dense_heads.") and k != "identity.anchor_embedding"}
    if set(new) != expected or any(new[k].shape != trained[k].shape for k in new):
        missing, extra = sorted(expected - set(new)), sorted(set(new) - expected)
        bad = [k for k in set(new) & expected if new[k].shape != trained[k].shape]
        raise UserError(f"the checkpoint does not fit the released architecture: missing {missing[:3]}, "
                        f"unexpected {extra[:3]}, wrong shapes {bad[:3]}")
    model.trainable_modules().load_state_dict({**trained, **new}, strict=True)

    facenet = {k[len(FACENET_PREFIX):]: v for k, v in with_prefix(state, FACENET_PREFIX).items()}
    report.consumed["irse50"] = sorted(with_prefix(state, FACENET_PREFIX))
    report.dropped += sorted(k for k in state if k in DROPPED_EXACT
                             or any(k.startswith(EMBEDDING_PREFIX + d) for d in DROPPED_EMBEDDING))
    seen = {k for keys in report.consumed.values() for k in keys} | set(report.dropped)
    report.unused = sorted(set(state) - seen)
    if report.unused:
        raise UserError(f"{len(report.unused)} checkpoint keys have no place in the import, e.g. {report.unused[0]}")

    out = Path(out)
    DenseFacePipeline.from_sd(sd, model, id_backend="irse50", id_weights=None).save_pretrained(out)
    if facenet:
        torch.save(facenet, str(out / DENSE_FACE_FOLDER / IRSE50_FILE))
    return report
