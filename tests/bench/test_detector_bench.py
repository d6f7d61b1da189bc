"""Face-detection recall per cascade step on framings of the sample's single-face photos.

Run with ``make bench``. The framings are those of `tests.face_variants` (the photo, its
mirror, rolled by ±30° and ±60°, its aligned crop at 250 and 112 px). For each step of
`FaceDetector` it prints the recall of that step alone and of the cascade up to it, and the
whole cascade's recall and time per image against the old single detector (BlazeFace
full-range on the photo: the cascade's first step), measured in this run.
"""
from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

from denseface.annotators.face_detectors import DETECT_MAX_SIDE, DLIB_MIN_SIDE, FaceDetector, scaled_copy
from denseface.config import BuildConfig
from tests.face_variants import SINGLE_FACE, decoded, variants

pytestmark = pytest.mark.bench


def test_detector_recall_per_step():
    det = FaceDetector(BuildConfig().min_face_score)
    framings = [(f"{stem}/{name}", image) for stem in SINGLE_FACE for name, image, _ in variants(decoded(stem))]
    n = len(framings)
    steps = [(name, detect, make) for name, detect, make in det.steps]
    alone = {name: 0 for name in det.step_names}
    first = Counter()
    for key, image in framings:
        small, _ = scaled_copy(image)
        for name, detect, make in steps:
            alone[name] += bool(detect(make(small)[0]))
        alone["dlib_cnn"] += bool(det.dlib(scaled_copy(image, DETECT_MAX_SIDE, DLIB_MIN_SIDE)[0]))
        found = det(image)
        first[found[0].detector if found else "(none)"] += 1
    base_name, base_detect, _ = steps[0]
    t0 = time.perf_counter()
    for _, image in framings:
        base_detect(scaled_copy(image)[0])
    t_base = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    found_all = [bool(det(image)) for _, image in framings]
    t_cascade = (time.perf_counter() - t0) / n
    print(f"\nframings: {n} ({len(SINGLE_FACE)} photos x {n // len(SINGLE_FACE)})")
    print(f"{'step':28s} {'alone':>7s} {'cascade to here':>16s} {'first finder':>13s}")
    cumulative = 0
    for name in det.step_names:
        cumulative += first[name]
        print(f"{name:28s} {alone[name] / n:7.1%} {cumulative / n:16.1%} {first[name]:13d}")
    recall = float(np.mean(found_all))
    print(f"cascade recall {recall:.1%} vs {base_name} alone {alone[base_name] / n:.1%} "
          f"(x{recall / max(alone[base_name] / n, 1e-9):.2f}); time per image {t_cascade * 1e3:.1f} ms vs "
          f"{t_base * 1e3:.1f} ms (x{t_cascade / t_base:.2f})")
    assert recall == 1.0
