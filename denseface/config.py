"""Validated configuration (YAML file and/or CLI flags): the build's models, and how a model's fields
become command-line flags, so each setting is declared once (its default and help text included)."""
from __future__ import annotations

import argparse
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

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


def flag(default: Any = ..., *, help: str, name: str | None = None, metavar: str | None = None,
         **field_kwargs: Any) -> Any:
    """A config field that is also a command-line flag of the commands that read this model
    (`add_flags`). ``name`` overrides ``--field-name``; a bool field whose default is True becomes
    ``--no-field-name``. The help text gets the default appended unless it is None or False."""
    extra = {"flag": name or True, **({"metavar": metavar} if metavar else {})}
    if "default_factory" in field_kwargs:
        return Field(description=help, json_schema_extra=extra, **field_kwargs)
    return Field(default, description=help, json_schema_extra=extra, **field_kwargs)


def _flag_type(annotation: Any) -> tuple[Any, bool]:
    """(element type, repeatable) of a field annotation, Optional unwrapped."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else str
    if typing.get_origin(annotation) is list:
        return typing.get_args(annotation)[0], True
    return annotation, False


def flag_fields(model: type[BaseModel]) -> dict[str, Any]:
    """The fields of ``model`` declared with `flag`, by name."""
    return {n: f for n, f in model.model_fields.items() if isinstance(f.json_schema_extra, dict)
            and "flag" in f.json_schema_extra}


def add_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> None:
    """One flag per `flag` field of ``model``. Every flag defaults to None (= not given), so a YAML
    ``--config`` value stays unless the flag is given (`flag_values`, `load_model_config`)."""
    for name, field in flag_fields(model).items():
        extra = field.json_schema_extra
        kind, repeatable = _flag_type(field.annotation)
        default = None if field.default_factory is not None else field.default
        opts: dict[str, Any] = {"dest": name, "default": None, "help": field.description}
        if default not in (None, False, "") and kind is not bool:
            opts["help"] += f" (default {default})"
        if kind is bool:
            opts.update(action="store_const", const=not default)
            flag_name = extra["flag"] if isinstance(extra["flag"], str) else \
                "--" + ("no-" if default else "") + name.replace("_", "-")
        else:
            flag_name = extra["flag"] if isinstance(extra["flag"], str) else "--" + name.replace("_", "-")
            if typing.get_origin(kind) is Literal:
                opts["choices"] = list(typing.get_args(kind))
            else:
                opts["type"] = kind
            if repeatable:
                opts["action"] = "append"
            if "metavar" in extra:
                opts["metavar"] = extra["metavar"]
        parser.add_argument(flag_name, **opts)


def flag_values(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The `flag` fields' values from parsed ``args`` (None where not given), for `load_model_config`."""
    return {name: getattr(args, name, None) for name in flag_fields(model)}


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
