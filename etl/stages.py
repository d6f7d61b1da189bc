"""The stage list. Adding a stage = one module in ``annotators/`` + one line here."""
from __future__ import annotations

import hashlib
import json

import pyarrow as pa

from denseface.annotators.base import Stage
from denseface.annotators.captions import Captions
from denseface.annotators.decode import Decode
from denseface.annotators.depth import Depth
from denseface.annotators.detect_align import DetectAlign
from denseface.annotators.head_pose import HeadPose
from denseface.annotators.identity import Identity
from denseface.annotators.landmarks import Landmarks
from denseface.annotators.latent import Latent
from denseface.annotators.pseudo_mask import PseudoMask
from denseface.annotators.restore import Restore
from denseface.config import RESOURCES, BuildConfig
from denseface.errors import ConfigError, MissingFileError
from denseface.model_refs import require
from denseface.shards import schema

STAGES: tuple[type[Stage], ...] = (
    Decode,
    DetectAlign,
    Restore,
    Latent,
    Landmarks,
    Depth,
    PseudoMask,
    HeadPose,
    Identity,
    Captions,
)


def build_stages(cfg: BuildConfig) -> list[Stage]:
    unknown = set(cfg.stages) - {s.name for s in STAGES}
    if unknown:
        raise ConfigError(f"config names unknown stages {sorted(unknown)}; stages are {[s.name for s in STAGES]}")
    stages = [cls(cfg) for cls in STAGES]
    require([w for stage in stages for w in stage.weights()])  # every missing model at once, before any work
    for stage in stages:
        try:
            stage.check()  # missing weights etc. fail here, before any work starts
        except FileNotFoundError as exc:
            raise MissingFileError(str(exc)) from exc
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    return stages


def stage_groups(stages: list[Stage]) -> list[list[Stage]]:
    """Consecutive stages with the same resources run together in one worker, so no
    pixels cross a process boundary between them."""
    groups: list[list[Stage]] = []
    for stage in stages:
        if groups and _sig(groups[-1][-1]) == _sig(stage):
            groups[-1].append(stage)
        else:
            groups.append([stage])
    return groups


def _sig(stage: Stage) -> tuple:
    return tuple(getattr(stage.conf, k) for k in RESOURCES)


def _arrow_type(alias: str) -> pa.DataType:
    if alias.startswith("list<") and alias.endswith(">"):
        return pa.list_(_arrow_type(alias[5:-1]))
    return pa.type_for_alias(alias)


def manifest_schema(stages: list[Stage]) -> pa.Schema:
    fields = {name: _arrow_type(alias) for s in stages for name, alias in s.manifest_fields.items()}
    return schema.manifest_schema(fields, [s.name for s in stages])


def build_fingerprint(cfg: BuildConfig, stages: list[Stage]) -> str:
    """What decides the bytes of a unit's outputs; a unit written under another
    fingerprint is redone on resume rather than mixed into the dataset."""
    decisive = cfg.model_dump(mode="json", exclude={"sources", "out", "workers", "runner", "wave_units", "pretrained"})
    for name, conf in decisive.get("stages", {}).items():
        for k in (*RESOURCES, "sha256"):
            conf.pop(k, None)
    decisive["stage_versions"] = [f"{s.name}:{s.backend}@{s.version}" for s in stages]
    decisive["schema_version"] = schema.SCHEMA_VERSION
    return hashlib.sha1(json.dumps(decisive, sort_keys=True).encode()).hexdigest()
