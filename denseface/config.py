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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from denseface.errors import ConfigError, MissingFileError

M = TypeVar("M", bound=BaseModel)
PRESETS_DIR = Path(__file__).parent / "configs"


def flag(default: Any = ..., *, help: str, name: str | None = None, metavar: str | None = None,
         const: Any = None, **field_kwargs: Any) -> Any:
    """A config field that is also a command-line flag of the commands that read this model
    (`add_flags`). ``name`` overrides ``--field-name``. With ``const`` the flag takes no value and
    sets the field to it (``--skip-bad-shards``: ``bad_shards="skip"``); a bool field has
    ``not default`` implicitly, so one whose default is True becomes ``--no-field-name``, its help
    read after "do not". Other flags' help gets the default appended unless it is None."""
    extra = {"flag": name or True, **({"metavar": metavar} if metavar else {}),
             **({"const": const} if const is not None else {})}
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
    ``--config`` value stays unless the flag is given (`flag_values`, `load_model_config`); a field
    without a default is a required flag."""
    for name, field in flag_fields(model).items():
        extra = field.json_schema_extra
        kind, repeatable = _flag_type(field.annotation)
        default = None if field.default_factory is not None or field.is_required() else field.default
        const = (not default) if kind is bool else extra.get("const")
        flag_name = extra["flag"] if isinstance(extra["flag"], str) else \
            "--" + ("no-" if const is False else "") + name.replace("_", "-")
        opts: dict[str, Any] = {"dest": name, "default": None, "help": field.description,
                                "required": field.is_required()}
        if const is not None:
            opts.update(action="store_const", const=const)
            if const is False:
                opts["help"] = f"do not {field.description}"
        else:
            if default not in (None, ""):
                opts["help"] += f" (default {default})"
            if typing.get_origin(kind) is Literal:
                opts["choices"] = list(typing.get_args(kind))
            else:  # a structured value (a tuple) comes as text, and the model's validator parses it
                opts["type"] = kind if isinstance(kind, type) else str
            if repeatable:
                opts["action"] = "append"
            if "metavar" in extra:
                opts["metavar"] = extra["metavar"]
        parser.add_argument(flag_name, **opts)


def flag_values(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The `flag` fields' values from parsed ``args`` (None where not given), for `load_model_config`."""
    return {name: getattr(args, name, None) for name in flag_fields(model)}


UNSET_BACKEND = "default"  # how an unset `StageConfig.backend` is written


def _resource(default: Any, **field_kwargs: Any) -> Any:
    """A `StageConfig` field that sets how Ray runs the stage, never what it writes (`RESOURCES`)."""
    return Field(default, json_schema_extra={"resource": True}, **field_kwargs)


class StageConfig(BaseModel):
    """Backend, weights and Ray resources of one stage."""

    model_config = ConfigDict(extra="forbid")

    # One of the stage's BACKENDS (annotators/); None: its default, the first of them.
    backend: str | None = None
    weights: str | None = None  # local path of the backend's weights, where it has any
    sha256: str | None = None  # the published weights file's SHA-256: checked before any work
    num_cpus: float = _resource(1.0)
    num_gpus: float = _resource(0.0)
    batch_size: int = _resource(16, ge=1)
    concurrency: int | None = _resource(None, ge=1)  # actors; None = the run's worker count
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("backend", mode="before")
    @classmethod
    def _default_is_unset(cls, v: Any) -> Any:
        """``backend: default`` (configs written before None meant it) is the same as leaving it out."""
        return None if v == UNSET_BACKEND else v

    @field_serializer("backend")
    def _unset_as_default(self, v: str | None) -> str:
        """Unset is written ``default``, as it always was: build fingerprints and summaries of
        existing datasets stay the same, so their builds resume."""
        return UNSET_BACKEND if v is None else v


# The Ray resource keys, in field order: what `etl.stages` groups stages by and leaves out of a
# build's fingerprint.
RESOURCES: tuple[str, ...] = tuple(n for n, f in StageConfig.model_fields.items()
                                   if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("resource"))


class BuildConfig(BaseModel):
    """Everything that decides what a build produces (and so what resume compares)."""

    model_config = ConfigDict(extra="forbid")

    sources: list[str] = flag(default_factory=list, name="--source", metavar="KIND:PATH",
                              help="casia:DIR, celeba:DIR, folder:DIR or release:DIR (repeatable)")
    out: Path | None = flag(None, help="output folder")
    shard_size: int = flag(1000, help="inputs per shard / work unit", ge=1)
    wave_units: int = Field(64, ge=1)  # units per runner execution: bounds the driver's memory
    workers: int = flag(default_factory=lambda: max(1, os.cpu_count() or 1), ge=1,
                        help="parallel workers (default: CPU count)")
    runner: Literal["ray", "local"] = flag("ray", help="ray or local (one process)")
    crop_size: int = Field(512, ge=64)  # aligned face crop, pixels
    jpeg_quality: int = Field(95, ge=50, le=100)
    max_file_bytes: int = 100 * 2**20  # larger files are rejected unread
    max_pixels: int = 60_000_000  # decompression-bomb guard, checked on the header before decoding
    min_side: int = Field(32, ge=1)  # smaller images are rejected
    # Longer sides are decoded at a reduced scale: bounds each image's memory in a batch.
    max_decode_side: int = Field(2048, ge=64)
    min_face_px: int = Field(24, ge=1)  # smaller faces are rejected
    min_face_score: float = Field(0.5, ge=0.0, le=1.0)  # mediapipe detection confidence
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

    @model_validator(mode="after")
    def _backends_exist(self) -> BuildConfig:
        """Each configured stage's backend is one of that stage's: a typo fails when the config
        loads, as ``stages.NAME.backend``. Unknown stage names are left to `etl.stages.build_stages`."""
        if not self.stages:
            return self
        from denseface.etl.stages import STAGES  # the annotators: only when there are stages to check

        by_name = {stage.name: stage for stage in STAGES}
        problems = []
        for name, conf in self.stages.items():
            try:
                if name in by_name:
                    by_name[name].resolve_backend(conf.backend)
            except ValueError as exc:
                problems.append(InitErrorDetails(type=PydanticCustomError("backend", "{reason}", {"reason": str(exc)}),
                                                 loc=("stages", name, "backend"), input=conf.backend))
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        return self

    def stage(self, name: str) -> StageConfig:
        return self.stages.get(name) or StageConfig()


def load_model_config(model: type[M], path: Path | None, **overrides: Any) -> M:
    """A YAML file (optional) with CLI overrides on top (None = not given); unknown keys are errors."""
    data: dict[str, Any] = {}
    if path is not None:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
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
