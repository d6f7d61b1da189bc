"""Validated training configuration (YAML file and/or CLI flags), like `denseface.config`.

Defaults follow the paper (§4, Implementation Details: batch 12, learning rate 5e-6, AdamW
on SD 2.1 at 512 px). The loss weights are not given in the paper: 1.0 each here, with each
term a mean (per pixel and landmark), so they are comparable in size across resolutions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from denseface.config import load_model_config


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # data
    data: list[str] = Field(default_factory=lambda: ["data/sample-dataset"])  # folders, brace patterns, URLs
    val_data: list[str] | None = None  # None: the first samples of `data`, in order
    id_index: Path | None = None  # identity index folder; None: cached under the dense-face cache
    num_workers: int = Field(4, ge=0)
    bad_shards: Literal["stop", "skip"] = "stop"  # an unreadable local shard: stop naming it, or skip + count
    shuffle_buffer: int = Field(1000, ge=1)
    chunk_shards: int = Field(4, ge=1)  # shards per shuffle chunk (bounds the re-read on resume)
    use_latents: bool = True  # take latent.npy when a sample has one made by this VAE, instead of running it
    caption_dropout: float = Field(0.1, ge=0.0, le=1.0)  # prompt -> "" (classifier-free guidance)
    # model
    pretrained: str | None = None  # SD 2.1: hub id[@revision] or diffusers folder; None: the tiny offline model
    resolution: int | None = Field(None, ge=64)  # None: the model's (UNet sample size x 8)
    head_size: int | None = Field(None, ge=1)  # dense-head output size; None: latent size
    heatmap_sigma: float = Field(1.0, gt=0.0)  # in head pixels
    heatmaps_on: Literal["auto", "loader", "device"] = "auto"  # auto: loader when head_size <= 32
    model: dict[str, Any] = Field(default_factory=dict)  # DenseFaceConfig overrides (id_dim comes from data)
    # optimisation
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(12, ge=1)  # per process
    lr: float = Field(5e-6, gt=0.0)
    lr_warmup_steps: int = Field(0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(1e-2, ge=0.0)
    max_grad_norm: float | None = 1.0
    lambda_landmarks: float = Field(1.0, ge=0.0)  # lambda_1, L_LD
    lambda_mask: float = Field(1.0, ge=0.0)  # lambda_2, L_PM
    lambda_depth: float = Field(1.0, ge=0.0)  # lambda_3, L_DE
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto: no on CPU, bf16 (else fp16) on GPU
    cpu: bool = False  # train on the CPU even where a GPU exists (tests, demos)
    gradient_checkpointing: bool = False
    seed: int = 0
    # bookkeeping
    output_dir: Path = Path("runs/dense-face")
    resume: str | None = None  # a checkpoint folder, or "latest" (of output_dir)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int | None = Field(3, ge=1)  # None: keep all
    validate_every: int = Field(500, ge=1)
    val_samples: int = Field(4, ge=1)
    tensorboard: bool = True
    progress: bool = True

    @field_validator("data")
    @classmethod
    def _some_data(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("data: give at least one dataset folder or shard URL")
        return v


def load_train_config(path: Path | None = None, **overrides: Any) -> TrainConfig:
    return load_model_config(TrainConfig, path, **overrides)
