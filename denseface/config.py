"""Validated configuration of a dataset build (YAML file and/or CLI flags)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from denseface.errors import MissingFileError


M = TypeVar("M", bound=BaseModel)
PRESETS_DIR = Path(__file__).parent / "configs"


class StageConfig(BaseModel):
    """Backend, weights and Ray resources of one stage."""

    model_config = ConfigDict(extra="forbid")

    backend: str = "default"
    weights: str | None = None  # local path of the backend's weights, where it has any
    sha256: str | None = None  # the published weights file's SHA-256: checked before any work
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = Field(16, ge=1)
    concurrency: int | None = Field(None, ge=1)  # actors; None = the run's worker count
    options: dict[str, Any] = Field(default_factory=dict)


class BuildConfig(BaseModel):
    """Everything that decides what a build produces (and so what resume compares)."""

    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(default_factory=list)  # "casia:/path", "celeba:/path", ...
    out: Path | None = None
    shard_size: int = Field(1000, ge=1)
    wave_units: int = Field(64, ge=1)  # units per runner execution: bounds the driver's memory
    workers: int = Field(default_factory=lambda: max(1, os.cpu_count() or 1), ge=1)
    runner: Literal["ray", "local"] = "ray"
    crop_size: int = Field(512, ge=64)
    jpeg_quality: int = Field(95, ge=50, le=100)
    max_file_bytes: int = 100 * 2**20
    max_pixels: int = 60_000_000  # decompression-bomb guard, checked before decoding
    min_side: int = Field(32, ge=1)
    # Longer sides are decoded at a reduced scale: bounds each image's memory in a batch.
    max_decode_side: int = Field(2048, ge=64)
    min_face_px: int = Field(24, ge=1)
    min_face_score: float = Field(0.5, ge=0.0, le=1.0)
    # A second face at least this fraction of the largest face's area makes the identity
    # of the image ambiguous: the image is rejected rather than guessed.
    multi_face_area_ratio: float = Field(0.2, gt=0.0, le=1.0)
    stages: dict[str, StageConfig] = Field(default_factory=dict)
    # The SD a preset trains on (hub id or local folder): listed by `denseface weights check`,
    # not used by the build (not in its fingerprint); `denseface train --pretrained` takes it.
    pretrained: str | None = None

    @field_validator("sources")
    @classmethod
    def _sources_have_kind(cls, v: list[str]) -> list[str]:
        for s in v:
            if ":" not in s:
                raise ValueError(f"source {s!r} must look like KIND:PATH, e.g. casia:/data/CASIA-WebFace")
        return v

    def stage(self, name: str) -> StageConfig:
        return self.stages.get(name) or StageConfig()


def load_model_config(model: type[M], path: Path | None, **overrides: Any) -> M:
    """A YAML file (optional) with CLI overrides on top (None = not given); unknown keys are errors."""
    data: dict[str, Any] = {}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return model.model_validate(data)


def preset_path(ref: str | Path) -> Path:
    """A YAML file, or the name of a preset in denseface/configs (``default``, ``paper``)."""
    path = Path(ref)
    if path.is_file():
        return path
    preset = PRESETS_DIR / f"{ref}.yaml"
    if path.suffix == "" and preset.is_file():
        return preset
    names = sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))
    raise MissingFileError(f"config {ref} not found: give a YAML file or a preset name ({', '.join(names)})")


def load_config(path: str | Path | None, **overrides: Any) -> BuildConfig:
    return load_model_config(BuildConfig, preset_path(path) if path is not None else None, **overrides)
