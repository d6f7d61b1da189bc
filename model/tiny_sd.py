"""Stable Diffusion components: a tiny SD-2.1-shaped model built from configs, and a local loader.

Why: tests, CPU demos and CI must run offline and in seconds, so they use a tiny model with the
same module layout as SD 2.1 (linear-projection transformers, CLIP text encoder, 8x VAE). Real
training loads SD 2.1 from a local diffusers-layout folder or a hub id with the same `load_sd` call.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from denseface.model_refs import Resolved, require, resolve_pretrained

SD_SUBFOLDERS: tuple[str, ...] = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")

# Words that get a single BPE token in the tiny vocabulary (the identity MLP anchors on "face").
TINY_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "with", "and", "in", "photo", "portrait", "face", "person",
    "man", "woman", "smiling", "looking", "at", "camera", "young", "old", "hair",
)

HOW_TO_GET_SD = (
    "Give a hub id (e.g. stabilityai/stable-diffusion-2-1-base) or a Stable Diffusion 2.1 checkpoint "
    "in diffusers layout (model_index.json plus the unet/ vae/ text_encoder/ tokenizer/ scheduler/ "
    "subfolders; e.g. `hf download <sd-2.1 repo> --local-dir PATH`), or write the tiny offline demo "
    "model with `python -c \"from denseface.model.tiny_sd import save_tiny_sd; save_tiny_sd('PATH')\"`."
)


@dataclass
class SDComponents:
    """The five Stable Diffusion parts Dense-Face needs (no safety checker, no feature extractor)."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler: SchedulerMixin


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode map, so every byte string is representable."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def bpe_vocab(words: tuple[str, ...] | list[str], clip: bool = True) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) of a byte-level BPE where every byte is a token (so any text tokenizes) and
    each word in `words` is one: CLIP style (``"</w>"`` word ends) or GPT-2 style (``"Ġ"`` space prefix)."""
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for tok in chars + ([c + "</w>" for c in chars] if clip else []):
        vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"] if clip else ["Ġ", *word]
        while len(symbols) > 1:
            a, b = symbols[0], symbols[1]
            if (a, b) not in merges:
                merges.append((a, b))
            vocab.setdefault(a + b, len(vocab))
            symbols = [a + b] + symbols[2:]
    return vocab, merges


def build_tiny_tokenizer(words: tuple[str, ...] = TINY_WORDS, model_max_length: int = 77) -> CLIPTokenizer:
    """A real CLIPTokenizer over a tiny byte-level BPE vocab (`bpe_vocab`), built in memory (no download)."""
    vocab, merges = bpe_vocab(words)
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def tiny_unet_config() -> dict:
    """SD-2.1-shaped UNet, tiny: 3 levels, linear projections, 8x8 latents (64 px images)."""
    return dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        norm_num_groups=16,
    )


def sd21_unet_config() -> dict:
    """The UNet of SD 2.1-base (512 px, 64x64 latents): for GPU checks with random weights."""
    return dict(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
    )


def sd21_vae_config() -> dict:
    """SD 2.1-base's VAE (the latent stage's encoder): for GPU checks with random weights."""
    return dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4, sample_size=512)


def tiny_vae_config() -> dict:
    return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16), layers_per_block=1,
                latent_channels=4, norm_num_groups=8, sample_size=64)


def build_random_sd21(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                      seed: int = 0) -> SDComponents:
    """SD 2.1-base's architecture (stabilityai/stable-diffusion-2-1-base configs) with random
    weights, for timings: a forward's cost does not depend on the weights' values."""
    torch.manual_seed(seed)
    tok = build_tiny_tokenizer()
    with torch.device(device):
        unet = UNet2DConditionModel(**sd21_unet_config())
        vae = AutoencoderKL(**sd21_vae_config())
        text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=1024, intermediate_size=4096,
                                            num_hidden_layers=23, num_attention_heads=16, max_position_embeddings=77,
                                            hidden_act="gelu", projection_dim=1024, bos_token_id=tok.bos_token_id,
                                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    for m in (unet, vae, text):
        m.to(device, dtype).eval()
    return SDComponents(unet=unet, vae=vae, text_encoder=text, tokenizer=tok, scheduler=sched)


def build_tiny_sd(seed: int = 0) -> SDComponents:
    """Tiny SD components from configs, deterministic for a given seed; all in eval mode."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**tiny_unet_config())
    vae = AutoencoderKL(**tiny_vae_config())
    tokenizer = build_tiny_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            hidden_act="gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    for m in (unet, vae, text_encoder):
        m.eval()
    return SDComponents(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def save_sd(components: SDComponents, path: str | Path) -> Path:
    """Write components as a diffusers-layout folder that StableDiffusionPipeline can load."""
    pipe = StableDiffusionPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        tokenizer=components.tokenizer,
        unet=components.unet,
        scheduler=components.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    path = Path(path)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def save_tiny_sd(path: str | Path, seed: int = 0) -> Path:
    """Build the tiny model and save it in diffusers layout (unet/ vae/ text_encoder/ tokenizer/ scheduler/)."""
    return save_sd(build_tiny_sd(seed), path)


def check_sd_folder(path: str | Path) -> Path:
    """Fail fast, before any work, with the missing path and how to get it."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"Stable Diffusion folder not found: {path}. {HOW_TO_GET_SD}")
    missing = [s for s in SD_SUBFOLDERS if not (path / s).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"Stable Diffusion folder {path} lacks subfolder(s) {', '.join(missing)} "
            f"(looked for {', '.join(str(path / s) for s in missing)}). {HOW_TO_GET_SD}"
        )
    return path


def resolve_sd(ref: str | Path) -> Resolved:
    """Where the SD model ``ref`` (local diffusers folder or hub id[@revision]) is; nothing downloaded."""
    return resolve_pretrained(ref, "Stable Diffusion", HOW_TO_GET_SD)


def load_sd(
    ref: str | Path,
    dtype: torch.dtype | None = None,
    scheduler_cls: type[SchedulerMixin] = DDIMScheduler,
) -> SDComponents:
    """Load SD from a local diffusers-layout folder (real SD 2.1 or the tiny one) or a hub id
    (``stabilityai/stable-diffusion-2-1-base[@revision]``: the Hugging Face cache, downloading
    on first use unless offline). A missing model fails here, in one line, before any loading.

    The scheduler is rebuilt as `scheduler_cls` (default DDIM, as in the paper) from the saved config.
    """
    resolved = resolve_sd(ref)
    require([resolved])
    if resolved.kind == "path":
        check_sd_folder(resolved.location)
    source, kw = resolved.pretrained_args()
    dkw = dict(kw, torch_dtype=dtype) if dtype is not None else kw
    unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **dkw)
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **dkw)
    tkw = dict(kw, dtype=dtype) if dtype is not None else kw  # transformers 5 spells it `dtype`
    text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **tkw)
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **kw)
    scheduler = scheduler_cls.from_pretrained(source, subfolder="scheduler", **kw)
    for m in (unet, vae, text_encoder):
        m.eval()
    return SDComponents(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)


def token_ids(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    """(B, 77) ids, padded and truncated the way StableDiffusionPipeline tokenizes."""
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def encode_prompt(components: SDComponents, prompts: list[str]) -> torch.Tensor:
    """Text embedding c (B, 77, k) the way StableDiffusionPipeline makes it (last hidden state)."""
    te = components.text_encoder
    return te(token_ids(components.tokenizer, prompts).to(te.device))[0]


def vae_fingerprint(vae) -> str:
    """sha1 (16 hex) of the VAE's config and every parameter's bytes, in fp32: the identity a cached
    ``latent.npy`` records, so the trainer uses it only with the VAE that made it."""
    h = hashlib.sha1(json.dumps({k: v for k, v in vae.config.items() if not k.startswith("_")}, sort_keys=True,
                                default=str).encode())
    with torch.no_grad():
        for name, t in sorted(vae.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
