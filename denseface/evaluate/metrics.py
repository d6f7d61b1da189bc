"""The maths of the evaluation, on embeddings and angles already computed (no models here).

* CLIP-T: cosine of each image's CLIP embedding with its own prompt's (paired).
* CLIP-I, DINO, identity similarity: mean cosine over all (generated, real) pairs of one
  subject, as DreamBooth's CLIP-I/DINO and the identity scores of PhotoMaker/InstantID.
* Face diversity: mean LPIPS over all unordered pairs of one subject's generated faces.
* Identity retrieval (face swap, Table 4): whether an image's embedding is closest, in mean
  cosine, to its own subject's real faces among all subjects'.
* Pose error: absolute angle difference (wrapped to [0, 180]) per yaw, pitch, roll.
* FID: torchmetrics' Fréchet distance, fed by `scorers` (not here).
"""
from __future__ import annotations

from itertools import combinations
from typing import Callable, Sequence

import numpy as np


def unit_rows(x: np.ndarray) -> np.ndarray:
    """float64 rows scaled to unit L2 norm (a zero row stays zero)."""
    x = np.asarray(x, np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {x.shape}")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, M) cosines between the rows of ``a`` (N, D) and ``b`` (M, D)."""
    return unit_rows(a) @ unit_rows(b).T


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) cosine of row i of ``a`` with row i of ``b`` (CLIP-T: image i with its prompt)."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"paired embeddings must have one shape, got {np.shape(a)} and {np.shape(b)}")
    return (unit_rows(a) * unit_rows(b)).sum(1)


def mean_cosine_to_set(generated: np.ndarray, real: np.ndarray) -> np.ndarray:
    """(N,) for each generated row, its mean cosine to every real row (CLIP-I, DINO, ID sim)."""
    if len(real) == 0:
        return np.full(len(generated), np.nan)
    return cosine_matrix(generated, real).mean(1)


def retrieval_hits(generated: np.ndarray, own: Sequence[str], real: dict[str, np.ndarray]) -> np.ndarray:
    """(N,) 1.0 where row i's mean cosine is highest to the real set of ``own[i]``, else 0.0;
    NaN under two subjects with real embeddings (nothing to retrieve among)."""
    names = [s for s, e in real.items() if len(e)]
    if len(names) < 2:
        return np.full(len(generated), np.nan)
    scores = np.stack([mean_cosine_to_set(generated, real[s]) for s in names], axis=1)
    best = np.asarray(names)[scores.argmax(1)]
    return (best == np.asarray(own)).astype(np.float64)


def mean_pairwise(items: Sequence, distance: Callable[[Sequence, Sequence], np.ndarray]) -> float:
    """Mean of ``distance`` over all unordered pairs (i < j) of ``items``; NaN under two items.
    ``distance(firsts, seconds)`` gets the pairs as two lists and returns one value per pair."""
    pairs = list(combinations(range(len(items)), 2))
    if not pairs:
        return float("nan")
    values = np.asarray(distance([items[i] for i, _ in pairs], [items[j] for _, j in pairs]), np.float64)
    return float(values.mean())


def angle_error(condition: np.ndarray, estimate: np.ndarray) -> np.ndarray:
    """|condition - estimate| per angle in degrees, wrapped to [0, 180] (same shape as inputs)."""
    d = np.abs(np.asarray(condition, np.float64) - np.asarray(estimate, np.float64)) % 360.0
    return np.minimum(d, 360.0 - d)
