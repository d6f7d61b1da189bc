"""Validated training configuration (YAML file and/or CLI flags), like `denseface.config`.

Defaults follow the paper (§4, Implementation Details: batch 12, learning rate 5e-6, AdamW
on SD 2.1 at 512 px). The loss weights are not given in the paper: 1.0 each here, with each
term a mean (per pixel and landmark), so they are comparable in size across resolutions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from denseface.config import flag, load_model_config


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # data
    data: list[str] = flag(default_factory=lambda: ["data/sample-dataset"], metavar="PATH|URL",
                           help="dataset folder, shard pattern (shard-{000000..000009}.tar) or pipe:/fsspec URL; "
                                "repeatable (default data/sample-dataset)")
    val_data: list[str] | None = None  # None: the first samples of `data`, in order
    id_index: Path | None = None  # identity index folder; None: cached under the dense-face cache
    num_workers: int = flag(4, name="--workers", help="DataLoader workers per process", ge=0)
    bad_shards: Literal["stop", "skip"] = flag("stop", name="--skip-bad-shards", const="skip",
                                               help="leave out (and count) unreadable shards instead of stopping "
                                                    "with their name")
    shuffle_buffer: int = Field(1000, ge=1)
    chunk_shards: int = Field(4, ge=1)  # shards per shuffle chunk (bounds the re-read on resume)
    use_latents: bool = True  # take latent.npy when a sample has one made by this VAE, instead of running it
    caption_dropout: float = flag(0.1, help="share of prompts trained as \"\" (for classifier-free guidance)",
                                  ge=0.0, le=1.0)
    # model
    pretrained: str | None = flag(None, help="SD 2.1: hub id[@revision] (e.g. stabilityai/stable-diffusion-2-1-base) "
                                  "or diffusers folder (default: the tiny offline model)")
    resolution: int | None = flag(None, help="training resolution (default: the model's, 512 / 64 tiny)", ge=64)
    head_size: int | None = Field(None, ge=1)  # dense-head output size; None: latent size
    heatmap_sigma: float = Field(1.0, gt=0.0)  # in head pixels
    heatmaps_on: Literal["auto", "loader", "device"] = "auto"  # auto: loader when head_size <= 32
    model: dict[str, Any] = Field(default_factory=dict)  # DenseFaceConfig overrides (id_dim comes from data)
    # optimisation
    steps: int = flag(1000, help="optimizer steps", ge=1)
    batch_size: int = flag(12, help="per process", ge=1)
    lr: float = flag(5e-6, help="AdamW learning rate", gt=0.0)
    lr_warmup_steps: int = Field(0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(1e-2, ge=0.0)
    max_grad_norm: float | None = 1.0
    lambda_landmarks: float = flag(1.0, help="weight of the landmark loss L_LD (lambda_1)", ge=0.0)
    lambda_mask: float = flag(1.0, help="weight of the pseudo-mask loss L_PM (lambda_2)", ge=0.0)
    lambda_depth: float = flag(1.0, help="weight of the depth loss L_DE (lambda_3)", ge=0.0)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = flag(
        "auto", help="auto: no on the CPU, bf16 (else fp16) on a GPU")
    cpu: bool = flag(False, help="train on the CPU even where a GPU exists")
    gradient_checkpointing: bool = flag(False, help="recompute UNet activations in the backward pass (less memory)")
    seed: int = flag(0, help="random seed")
    # bookkeeping
    output_dir: Path = flag(Path("runs/dense-face"), name="--out",
                            help="run folder: checkpoints, tensorboard, losses.jsonl")
    resume: str | None = flag(None, help="checkpoint folder, or 'latest' (of --out)")
    log_every: int = flag(10, help="steps between loss logs (losses.jsonl, TensorBoard)", ge=1)
    checkpoint_every: int = flag(500, help="steps between checkpoints", ge=1)
    keep_checkpoints: int | None = Field(3, ge=1)  # None: keep all
    validate_every: int = flag(500, help="steps between validation runs", ge=1)
    val_samples: int = Field(4, ge=1)
    tensorboard: bool = flag(True, help="write TensorBoard logs")
    progress: bool = flag(True, help="show a progress bar")

    @field_validator("data")
    @classmethod
    def _some_data(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("data: give at least one dataset folder or shard URL")
        return v


def load_train_config(path: Path | None = None, **overrides: Any) -> TrainConfig:
    return load_model_config(TrainConfig, path, **overrides)
