"""What models a run needs, where each is looked for, and whether it is there.

Why: a missing weight file used to be found stage by stage, after Ray had started. The same
lists serve ``denseface weights check`` (a report) and the start of ``build-dataset``, ``train``
and ``generate`` (`denseface.model_refs.require`: every missing model in one error, before any
work). The lists come from the loaders' own resolution (`Stage.weights`, `resolve_sd`), so the
check looks exactly where the run will look.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from denseface.config import BuildConfig, StageConfig
from denseface.model_refs import Resolved, hub_cache, offline, probe_hub, resolve_file, weights_dir

STATUS_TEXT = {"found": "found", "missing": "MISSING", "download": "not cached: downloads on first use",
               "mismatch": "CHECKSUM MISMATCH"}


def build_needs(cfg: BuildConfig) -> list[Resolved]:
    """Every model the build's configured stages load."""
    from denseface.etl.stages import STAGES

    return [w for cls in STAGES for w in cls(cfg).weights()]


def sd_needs(pretrained: str | Path | None) -> list[Resolved]:
    """The SD model (None: the tiny model, built in memory, needs nothing)."""
    if pretrained is None:
        return []
    from denseface.model.tiny_sd import resolve_sd

    return [resolve_sd(pretrained)]


def dense_face_needs(weights: str | Path | None) -> list[Resolved]:
    """A trained Dense-Face folder (`DenseFace.save_trained`): its safetensors and json."""
    if weights is None:
        return []
    from denseface.model.dense_face import CONFIG_NAME, WEIGHTS_NAME

    how = "a folder written by the trainer (runs/<x>/checkpoints/step-N) or DenseFacePipeline.save_pretrained"
    return [resolve_file(Path(weights) / name, f"Dense-Face {name}", how, "--weights")
            for name in (WEIGHTS_NAME, CONFIG_NAME)]


def identity_needs(backend: str, weights: str | None) -> list[Resolved]:
    """The identity backend's weights (generation embeds the reference photo with it)."""
    from denseface.annotators.identity import Identity

    conf = StageConfig(backend=backend, weights=weights)
    return Identity(BuildConfig(runner="local", workers=1, stages={"identity": conf})).weights()


def generate_needs(pretrained: str | Path | None, weights: str | Path | None = None,
                   id_backend: str | None = None, id_weights: str | None = None) -> list[Resolved]:
    """What ``denseface generate`` loads: SD, the Dense-Face folder (``weights``, else a local saved
    pipeline's ``dense_face/``) and the identity backend it was trained with (`identity_backend_for`,
    which also refuses a mismatched ``id_backend``)."""
    from denseface.generation.pipeline import (
        DENSE_FACE_FOLDER,
        TINY_CONFIG,
        UNTRAINED_CONFIG,
        bundled_id_weights,
        identity_backend_for,
    )
    from denseface.model.dense_face import DenseFace

    needed = sd_needs(pretrained) + dense_face_needs(weights)
    folder = Path(weights) if weights is not None else None
    if folder is None and pretrained is not None and (Path(pretrained) / DENSE_FACE_FOLDER).is_dir():
        folder = Path(pretrained) / DENSE_FACE_FOLDER
    if not all(r.ok for r in needed):
        return needed
    if folder is not None:
        config = DenseFace.read_config(folder)
    elif pretrained is None:
        config = TINY_CONFIG
    elif Path(pretrained).is_dir():
        config = UNTRAINED_CONFIG
    else:  # a hub pipeline may bundle dense_face/: its identity backend is checked as it loads
        return needed
    backend = identity_backend_for(config, id_backend)
    return needed + identity_needs(backend, id_weights or bundled_id_weights(folder, config))


def human_size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


@dataclass
class Row:
    what: str
    ref: str
    where: str
    status: str
    size: str
    sha256: str


def report(needed: list[Resolved]) -> list[Row]:
    """One row per model; hub ids not yet cached are probed online (metadata only)."""
    rows = []
    for r in needed:
        probe_hub(r)
        status = STATUS_TEXT[r.status] + (f" ({'; '.join(r.notes)})" if r.notes else "")
        rows.append(Row(r.what, r.ref or "-", r.location, status, human_size(r.size()), r.sha256() or "-"))
    return rows


def format_report(needed: list[Resolved]) -> str:
    needed = list({(r.what, r.location): r for r in needed}.values())  # build and generate share some
    lines = []
    for row in report(needed):
        lines.append(f"{row.what}\n    ref:    {row.ref}\n    where:  {row.where}\n    status: {row.status}\n"
                     f"    size:   {row.size}\n    sha256: {row.sha256}")
    ok = all(r.ok for r in needed)
    lines.append(f"{len(needed)} model(s) needed, {sum(not r.ok for r in needed)} missing; hub cache {hub_cache()}"
                 f"{' (offline)' if offline() else ''}; off-hub weights folder {weights_dir()}")
    if not ok:
        lines.extend(f"error: {r.error()}" for r in needed if not r.ok)
    return "\n".join(lines)
