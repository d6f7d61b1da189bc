"""``denseface evaluate``: generate with fixed seeds, score every metric, write the figures.

Generation (skipped with ``--images``): for each subject and each prompt, ``n`` text-mode
images (G1 + G2, `DenseFaceGenerator.generate`), image ``k`` with seed ``seed + k`` and the
subject's photo ``k mod (photos)`` as the identity reference; with ``--targets``, for each
target photo ``n`` face swaps the same way. Each image is written as
``OUT/images/<subject>/<mode>-<p|t><index>-s<seed>.png`` with its sidecar (`image_set`),
whose ``pose_condition`` is the pose the G2 branch was given (the face region's PnP pose;
null when no face mesh was found, as with the tiny model's noise images). A generation that
fails (a reference photo without a usable face, a target without a face) becomes a row of
``generation_failures`` in ``metrics.json`` and the run goes on.

Scoring: one face analysis per image (`FaceFinder`) feeds identity, pose and face diversity;
whole images feed CLIP, DINO and FID. Per image: ``clip_t`` (with its own prompt), ``clip_i``,
``dino`` and ``id_*`` (mean cosine to the subject's real photos), ``retrieval_*`` (1 when the
image's identity is closest to its own subject's among all subjects: Table 4's ID retrieval,
meaningful for face swap), the pose errors (``pose_mae``: mean over yaw, pitch, roll of
|condition - PnP estimate|; ``pose_mae_hopenet`` with Hopenet's estimate). Per
subject and mode: their means over images (face metrics over images with a face), ``face_div``
and the share of images with a face. Per mode (``subject = ALL``): the mean over subjects,
and ``fid`` over all the mode's images.

Outputs in ``OUT``: ``per_image.csv``, ``summary.csv``, ``metrics.json`` (summary, settings,
models, failures) and ``report.html``.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from denseface.evaluate import metrics as M
from denseface.evaluate.config import EvaluateConfig
from denseface.evaluate.image_set import (
    POSE_KEYS,
    EvalImage,
    EvalInputError,
    images_in,
    read_images,
    read_prompts,
    read_subjects,
    write_image,
)
from denseface.evaluate.scorers import (
    REQUIRED,
    ClipEncoder,
    DinoEncoder,
    Face,
    FaceFinder,
    FidScorer,
    IdentityScorer,
    LpipsScorer,
    ModelRefs,
    parse_metrics,
)

ALL = "ALL"
ID_METRICS = ("id_arcface", "id_adaface", "id_dlib")


@dataclass
class Scorers:
    """The loaded models of the selected metrics (None / absent when not selected)."""

    metrics: tuple[str, ...]
    faces: FaceFinder
    clip: ClipEncoder | None = None
    dino: DinoEncoder | None = None
    identity: dict[str, IdentityScorer] = field(default_factory=dict)
    lpips: LpipsScorer | None = None
    fid: FidScorer | None = None
    hopenet: Any = None

    @classmethod
    def load(cls, metrics: tuple[str, ...], refs: ModelRefs) -> "Scorers":
        for m in metrics:
            if m in REQUIRED and not getattr(refs, REQUIRED[m][0]):
                raise EvalInputError(f"metric {m} needs {REQUIRED[m][1]} (see `denseface evaluate --help`), "
                                     f"or leave it out with --metrics")
        s = cls(metrics, FaceFinder())
        if {"clip_t", "clip_i"} & set(metrics):
            s.clip = ClipEncoder(refs.clip, refs.device)
        if "dino" in metrics:
            s.dino = DinoEncoder(refs.dino, refs.device)
        for m in ID_METRICS:
            if m in metrics:
                backend = m.removeprefix("id_")
                s.identity[m] = IdentityScorer(backend, getattr(refs, backend, None), refs.device)
        if "face_div" in metrics:
            s.lpips = LpipsScorer(refs.lpips, refs.device)
        if "fid" in metrics:
            s.fid = FidScorer(refs.fid_inception, refs.fid_reference, refs.device)
        if "pose" in metrics and refs.hopenet:
            from denseface.model.hopenet import HopenetPose

            try:
                s.hopenet = HopenetPose(refs.hopenet, refs.device)
            except (FileNotFoundError, ValueError) as exc:
                raise EvalInputError(str(exc)) from None
        return s


# ---- generation ------------------------------------------------------------------------------

def generate_images(settings: EvaluateConfig, subjects: dict[str, list[Path]], prompts: list[str],
                    targets: list[Path]) -> tuple[list[EvalImage], list[dict[str, Any]], tuple[int, float]]:
    """Both modes for every subject (module docstring): the images, the failures and the (steps,
    guidance) they were made with."""
    from PIL import Image

    from denseface.generation.pipeline import SWAP_PROMPT, DenseFaceGenerator

    gen = DenseFaceGenerator.load(settings.pretrained, settings.weights, seed=settings.seed,
                                  device=settings.device, id_weights=settings.id_weights)
    steps, guidance = gen.sampler(settings.steps, settings.guidance)
    jobs = [("text", f"p{i}", prompt, None) for i, prompt in enumerate(prompts)]
    jobs += [("swap", f"t{i}", SWAP_PROMPT, target) for i, target in enumerate(targets)]
    images, failures = [], []
    progress = tqdm(total=len(subjects) * len(jobs) * settings.n, desc="generate", unit="image",
                    disable=not sys.stderr.isatty())
    for subject, photos in subjects.items():
        folder = settings.out / "images" / subject
        folder.mkdir(parents=True, exist_ok=True)
        for mode, tag, prompt, target in jobs:
            for k in range(settings.n):
                progress.update()
                seed, reference = settings.seed + k, photos[k % len(photos)]
                try:
                    res = gen.generate(reference, prompt, target=target, steps=steps, guidance=guidance,
                                       seed=seed)
                except ValueError as exc:
                    failures.append({"subject": subject, "mode": mode, "prompt": prompt, "seed": seed,
                                     "reference": str(reference), "target": str(target) if target else None,
                                     "reason": str(exc)})
                    continue
                region = res.region
                pose = (dict(zip(POSE_KEYS, (region.yaw, region.pitch, region.roll)))
                        if region.landmarks is not None else None)
                path = folder / f"{mode}-{tag}-s{seed}.png"
                Image.fromarray(res.final).save(path)
                text = gen.model.prompt_for(prompt, identity=False)
                record = EvalImage(subject, str(path), mode, prompt, seed, str(reference),
                                   str(target) if target else None, pose, text if text != prompt else None)
                write_image(record)
                images.append(record)
    progress.close()
    return images, failures, (steps, guidance)


# ---- scoring ---------------------------------------------------------------------------------

def _load(path: str | Path) -> np.ndarray:
    from denseface.generation.face_region import load_photo

    return load_photo(path)


def score(images: list[EvalImage], subjects: dict[str, list[Path]], scorers: Scorers
          ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-image table, summary table) of the selected metrics (module docstring)."""
    metrics = scorers.metrics
    pixels = [_load(im.path) for im in images]
    faces: list[Face | None] = [scorers.faces(p) for p in pixels]
    rows = pd.DataFrame({"subject": [im.subject for im in images], "mode": [im.mode for im in images],
                         "path": [im.path for im in images], "prompt": [im.prompt for im in images],
                         "seed": [im.seed for im in images], "face_found": [f is not None for f in faces]})
    real_pixels = {s: [_load(p) for p in photos] for s, photos in subjects.items()}
    real_faces = {s: [f for f in map(scorers.faces, px) if f is not None] for s, px in real_pixels.items()}
    subj = rows["subject"].to_numpy()

    def per_subject(gen_emb: np.ndarray, real_emb: dict[str, np.ndarray], valid: np.ndarray) -> np.ndarray:
        out = np.full(len(images), np.nan)
        for s in real_emb:
            idx = np.flatnonzero((subj == s) & valid)
            if len(idx) and len(real_emb[s]):
                out[idx] = M.mean_cosine_to_set(gen_emb[idx], real_emb[s])
        return out

    everyone = np.ones(len(images), bool)
    if scorers.clip is not None:
        img_emb = scorers.clip.images(pixels)
        if "clip_t" in metrics:
            has_text = np.array([bool(im.text) for im in images])
            clip_t = np.full(len(images), np.nan)
            if has_text.any():
                idx = np.flatnonzero(has_text)
                clip_t[idx] = M.paired_cosine(img_emb[idx], scorers.clip.texts([images[i].text for i in idx]))
            rows["clip_t"] = clip_t
        if "clip_i" in metrics:
            rows["clip_i"] = per_subject(img_emb, {s: scorers.clip.images(px) for s, px in real_pixels.items()},
                                         everyone)
    if scorers.dino is not None:
        rows["dino"] = per_subject(scorers.dino.images(pixels),
                                   {s: scorers.dino.images(px) for s, px in real_pixels.items()}, everyone)
    found = rows["face_found"].to_numpy()
    face_idx = np.flatnonzero(found)
    for name, embed in scorers.identity.items():
        gen_emb = np.zeros((len(images), 1))
        if len(face_idx):
            e = embed([faces[i] for i in face_idx])
            gen_emb = np.zeros((len(images), e.shape[1]))
            gen_emb[face_idx] = e
        real_emb = {s: embed(fs) if fs else np.empty((0, gen_emb.shape[1])) for s, fs in real_faces.items()}
        rows[name] = per_subject(gen_emb, real_emb, found)
        retrieval = np.full(len(images), np.nan)
        if len(face_idx):
            retrieval[face_idx] = M.retrieval_hits(gen_emb[face_idx], subj[face_idx], real_emb)
        rows[name.replace("id_", "retrieval_")] = retrieval
    if "pose" in metrics:
        _pose_columns(rows, images, faces, scorers)

    summary = summarise(rows, faces, scorers, pixels)
    return rows, summary


def _pose_columns(rows: pd.DataFrame, images: list[EvalImage], faces: list[Face | None], scorers: Scorers) -> None:
    cond = np.full((len(images), 3), np.nan)
    est = np.full((len(images), 3), np.nan)
    hop = np.full((len(images), 3), np.nan)
    usable = [i for i, (im, f) in enumerate(zip(images, faces)) if f is not None and im.pose_condition]
    for i in usable:
        cond[i] = [images[i].pose_condition[k] for k in POSE_KEYS]
        est[i] = faces[i].pose
    if scorers.hopenet is not None and usable:
        hop[usable] = scorers.hopenet.predict_batch([faces[i].crop for i in usable])
    err = M.angle_error(cond, est)
    for j, k in enumerate(POSE_KEYS):
        rows[f"pose_err_{k}"] = err[:, j]
    rows["pose_mae"] = err.mean(1)
    if scorers.hopenet is not None:
        rows["pose_mae_hopenet"] = M.angle_error(cond, hop).mean(1)


def summarise(rows: pd.DataFrame, faces: list[Face | None], scorers: Scorers,
              pixels: list[np.ndarray]) -> pd.DataFrame:
    """Per (subject, mode) means + face diversity; per mode (subject ALL) subject means + FID."""
    value_cols = [c for c in rows.columns if c not in ("subject", "mode", "path", "prompt", "seed", "face_found")]
    out = []
    for (subject, mode), g in rows.groupby(["subject", "mode"], sort=True):
        rec = {"subject": subject, "mode": mode, "images": len(g), "face_rate": float(g["face_found"].mean())}
        rec.update({c: float(np.nanmean(g[c])) if np.isfinite(g[c]).any() else np.nan for c in value_cols})
        if scorers.lpips is not None:
            crops = [faces[i].crop for i in g.index if faces[i] is not None]
            rec["face_div"] = M.mean_pairwise(crops, scorers.lpips)
        out.append(rec)
    per = pd.DataFrame(out)
    overall = []
    for mode, g in per.groupby("mode", sort=True):
        rec = {"subject": ALL, "mode": mode, "images": int(g["images"].sum()),
               "face_rate": float(rows.loc[rows["mode"] == mode, "face_found"].mean())}
        for c in [c for c in per.columns if c not in ("subject", "mode", "images", "face_rate")]:
            rec[c] = float(np.nanmean(g[c])) if np.isfinite(g[c].astype(float)).any() else np.nan
        if scorers.fid is not None:
            rec["fid"] = scorers.fid([pixels[i] for i in np.flatnonzero(rows["mode"].to_numpy() == mode)])
        overall.append(rec)
    return pd.concat([per, pd.DataFrame(overall)], ignore_index=True)


# ---- the command -----------------------------------------------------------------------------

def evaluate(settings: EvaluateConfig) -> dict[str, Any]:
    """Generate (unless ``settings.images``), score, write the outputs; returns their paths and figures."""
    t0 = time.perf_counter()
    metrics = parse_metrics(settings.metrics)
    subjects = read_subjects(settings.subjects)
    targets: list[Path] = []
    if settings.images is None:
        if settings.prompts is None:
            raise EvalInputError("--prompts is required unless --images gives images made elsewhere")
        prompts = read_prompts(settings.prompts)
        if settings.targets is not None:
            if not settings.targets.is_dir() or not images_in(settings.targets):
                raise EvalInputError(f"--targets {settings.targets}: not a folder of photos")
            targets = images_in(settings.targets)
        if settings.n < 1:
            raise EvalInputError(f"--n must be >= 1, got {settings.n}")
    else:
        images = read_images(settings.images)
        unknown = sorted({im.subject for im in images} - set(subjects))
        if unknown:
            raise EvalInputError(f"--images has subjects without reference photos in --subjects: {', '.join(unknown)}")
        subjects = {s: p for s, p in subjects.items() if any(im.subject == s for im in images)}
    scorers = Scorers.load(metrics, settings.models)  # every model loads before any work
    failures: list[dict[str, Any]] = []
    recorded = settings.model_dump(mode="json", exclude={"models", "metrics", "device"})
    if settings.images is None:
        images, failures, (recorded["steps"], recorded["guidance"]) = generate_images(settings, subjects, prompts,
                                                                                      targets)
        if not images:
            raise EvalInputError(f"no image could be generated: {failures[0]['reason'] if failures else ''}")
    t_gen = time.perf_counter() - t0
    images = sorted(images, key=lambda r: (r.subject, r.path))  # the order read_images gives
    per_image, summary = score(images, subjects, scorers)
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    per_image.to_csv(out / "per_image.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    info = {
        "summary": json.loads(summary.to_json(orient="records")),
        "metrics": list(metrics),
        "models": settings.models.model_dump(),
        "settings": recorded,
        "generation_failures": failures,
        "seconds": {"generate": round(t_gen, 2), "total": round(time.perf_counter() - t0, 2)},
    }
    (out / "metrics.json").write_text(json.dumps(info, indent=2, default=str))
    from denseface.evaluate.report import evaluation_report

    report = evaluation_report(per_image, summary, info, out / "report.html")
    return {"per_image": out / "per_image.csv", "summary": out / "summary.csv", "json": out / "metrics.json",
            "report": report, "table": summary, "failures": failures}

