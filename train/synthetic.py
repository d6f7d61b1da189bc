"""A synthetic dataset with every member, in the real schema, for tests, benchmarks and demos.

Why: the trainer needs samples holding all members (image, landmarks, depth, mask, head
pose, captions, identity embedding) before, and independently of, the annotation stages and
their models. Each sample is a mediapipe-indexed face: `geometry.mesh.CANONICAL_FACE` turned
by a random head pose and projected into the 512 crop, with depth and pseudo mask rasterised
by the real annotators from those landmarks, and an image painted from the mask (so image,
landmarks, mask and depth agree, and there is something to learn). Identities differ by skin
tint and by an identity vector; each image's embedding is that vector plus noise.
Shards are written with `denseface.shards.writer.write_unit`, manifests and stats included.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from denseface.shards import schema
from denseface.shards.writer import write_unit

SIZE = 512
SYNTHETIC_VAE = "synthetic"  # the latent_vae of random latents: no real VAE matches it


def synthetic_landmarks(yaw: float, pitch: float, roll: float, scale: float = 0.034,
                        centre: tuple[float, float] = (0.5, 0.52)) -> np.ndarray:
    """(478, 3) float32 landmarks: the canonical face (cm) turned by the pose, orthographic."""
    from denseface.geometry import mesh as mt
    from denseface.geometry.pose import matrix_from_euler

    pts = mt.CANONICAL_FACE @ matrix_from_euler(yaw, pitch, roll).T  # camera axes: x right, y down
    lm = np.empty((478, 3), np.float64)
    lm[:mt.N_MESH, 0] = centre[0] + pts[:, 0] * scale
    lm[:mt.N_MESH, 1] = centre[1] + pts[:, 1] * scale
    lm[:mt.N_MESH, 2] = pts[:, 2] * scale
    for first, eye in ((468, mt.EYE_IMG_LEFT_UPPER + mt.EYE_IMG_LEFT_LOWER),
                       (473, mt.EYE_IMG_RIGHT_UPPER + mt.EYE_IMG_RIGHT_LOWER)):  # iris: centre + 4 points
        c = lm[list(eye)].mean(0)
        r = 0.3 * scale
        lm[first:first + 5] = c + np.array([[0, 0, 0], [r, 0, 0], [0, -r, 0], [-r, 0, 0], [0, r, 0]])
    return lm.astype(np.float32)


def synthetic_image(mask: np.ndarray, depth: np.ndarray, tint: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 face painted from the mask's colours, shaded by depth, tinted per identity."""
    from denseface.geometry.mask import colorize

    img = colorize(mask).astype(np.float32) * (0.6 + 0.4 * depth[..., None])
    img = np.where(mask[..., None] > 0, img * tint, 40.0 + 30.0 * tint)
    img += rng.normal(0.0, 6.0, img.shape)
    return np.clip(cv2.GaussianBlur(img, (0, 0), 2.0), 0, 255).astype(np.uint8)


def synthetic_members(key: str, identity: str, id_vec: np.ndarray, tint: np.ndarray,
                      rng: np.random.Generator, latent_size: int | None = None) -> dict[str, bytes]:
    from denseface.geometry.mask import render_pseudo_mask
    from denseface.geometry.raster import render_depth

    yaw, pitch, roll = rng.uniform(-35, 35), rng.uniform(-15, 15), rng.uniform(-12, 12)
    lmk = synthetic_landmarks(yaw, pitch, roll, scale=rng.uniform(0.03, 0.037),
                              centre=(0.5 + rng.uniform(-0.03, 0.03), 0.52 + rng.uniform(-0.03, 0.03)))
    depth, mask = render_depth(lmk, SIZE), render_pseudo_mask(lmk, SIZE)
    emb = id_vec + rng.normal(0.0, 0.15, id_vec.shape)
    side = "left" if yaw > 10 else "right" if yaw < -10 else "forward"
    meta = {"key": key, "identity": identity, "source": "synthetic", "source_path": f"synthetic/{key}",
            "yaw": round(float(yaw), 3), "pitch": round(float(pitch), 3), "roll": round(float(roll), 3),
            "captions": [{"captioner": "template", "text": f"a close-up photo of a person facing {side}",
                          "clip_score": None},
                         {"captioner": "synthetic", "text": f"a portrait of {identity}", "clip_score": None}],
            "id_backend": "synthetic", "id_dim": int(id_vec.shape[0])}
    arrays = {"lmk": lmk, "depth": depth, "mask": mask, "id": (emb / np.linalg.norm(emb)).astype(np.float32)}
    if latent_size:
        arrays["latent"] = rng.normal(0.0, 1.0, (4, latent_size, latent_size)).astype(np.float32)
        meta["latent_vae"] = SYNTHETIC_VAE
    return schema.encode_members(synthetic_image(mask, depth, tint, rng), meta, arrays)


def write_synthetic_dataset(root: Path, identities: int = 2, per_identity: int = 3, shards: int = 1,
                            id_dim: int = 128, seed: int = 0, corrupt: tuple[str, ...] = (),
                            latent_size: int | None = None) -> Path:
    """Write ``identities x per_identity`` samples over ``shards`` units into ``root``.

    Keys are ``id{i}_{j}``; samples go round-robin to shards. Keys in ``corrupt`` get
    undecodable jpg bytes (to test that the trainer skips them). ``latent_size`` adds random
    ``latent.npy`` members of that size (``latent_vae`` = `SYNTHETIC_VAE`).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    units: list[list[tuple[str, dict[str, bytes]]]] = [[] for _ in range(shards)]
    n = 0
    for i in range(identities):
        ident = f"person{i}"
        id_vec = rng.normal(0.0, 1.0, id_dim)
        tint = rng.uniform(0.6, 1.2, 3)
        for j in range(per_identity):
            key = f"id{i}_{j}"
            members = synthetic_members(key, ident, id_vec, tint, rng, latent_size)
            if key in corrupt:
                members[schema.JPG] = b"\xff\xd8 this is not a jpeg"
            units[n % shards].append((key, members))
            n += 1
    arrow = schema.manifest_schema({}, [])
    for u, samples in enumerate(units):
        name = schema.shard_name(u)
        rows = [{"key": k, "unit": u, "shard": name, "status": schema.Status.OK, "reason": "",
                 "identity": k.split("_")[0].replace("id", "person"), "source": "synthetic",
                 "source_path": f"synthetic/{k}", "versions": "{}"} for k, _ in samples]
        stats = {"unit": u, "n_inputs": len(samples), "n_ok": len(samples), "n_rejected": 0, "n_error": 0,
                 "members": sorted({e for _, m in samples for e in m})}
        write_unit(root, u, samples, rows, arrow, stats)
    return root


def publish_synthetic_dataset(root: Path, **kwargs) -> bool:
    """`write_synthetic_dataset` into a private folder, then renamed to ``root``: safe when
    several processes of one launch race to create it (the data is deterministic, so the first
    rename wins and the others discard theirs). True if this call published it."""
    root = Path(root)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    write_synthetic_dataset(tmp, **kwargs)
    try:
        os.rename(tmp, root)  # atomic; fails if another process already put a non-empty root there
        return True
    except OSError:
        shutil.rmtree(tmp)
        return False
