"""Pseudo mask (geometry/mask.py): classes where their landmarks are, image left/right."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from mediapipe.python.solutions import face_mesh_connections as fmc

from denseface.geometry import mask as pm
from denseface.geometry import mesh as mt
from denseface.geometry.raster import render_depth
from tests.conftest import face_mesh


@pytest.fixture(scope="module")
def mirrored_landmarks(aligned_face) -> np.ndarray:
    """mediapipe re-run on the horizontally flipped crop."""
    return face_mesh(np.fliplr(aligned_face[0]))


@pytest.fixture(scope="module")
def mask(aligned_face) -> np.ndarray:
    return pm.render_pseudo_mask(aligned_face[1])


def centroid(m: np.ndarray, cls: int) -> np.ndarray:
    r, c = np.nonzero(m == cls)
    return np.array([c.mean(), r.mean()])  # (x, y) in pixels


def left_right_swap() -> np.ndarray:
    """Class lookup that swaps the image-left and image-right eyes and brows."""
    swap = np.arange(10, dtype=np.uint8)
    swap[[pm.LEFT_EYE, pm.RIGHT_EYE]] = [pm.RIGHT_EYE, pm.LEFT_EYE]
    swap[[pm.LEFT_BROW, pm.RIGHT_BROW]] = [pm.RIGHT_BROW, pm.LEFT_BROW]
    return swap


def test_classes_and_colours():
    assert len(pm.CLASS_NAMES) == pm.NUM_CLASSES == 10
    assert pm.CLASS_NAMES[pm.LEFT_EYE] == "left_eye" and pm.CLASS_NAMES[pm.LOWER_LIP] == "lower_lip"
    assert pm.PAIRED_RGB.shape == (10, 3) and pm.PAIRED_RGB.dtype == np.uint8
    assert tuple(pm.PAIRED_RGB[0]) == (166, 206, 227) and tuple(pm.PAIRED_RGB[7]) == (227, 26, 28)
    m = np.arange(10, dtype=np.uint8).reshape(2, 5)
    assert np.array_equal(pm.colorize(m), pm.PAIRED_RGB[m])
    with pytest.raises(ValueError):
        pm.colorize(np.full((2, 2), 10, np.uint8))


def test_contours_follow_mediapipe_connections():
    def edges(chain):
        return {tuple(sorted(e)) for e in zip(chain, chain[1:])}

    def conn(s):
        return {tuple(sorted(e)) for e in s}

    assert edges(mt.EYE_IMG_LEFT_UPPER) | edges(mt.EYE_IMG_LEFT_LOWER) == conn(fmc.FACEMESH_RIGHT_EYE)
    assert edges(mt.EYE_IMG_RIGHT_UPPER) | edges(mt.EYE_IMG_RIGHT_LOWER) == conn(fmc.FACEMESH_LEFT_EYE)
    assert edges(mt.BROW_IMG_LEFT_UPPER) | edges(mt.BROW_IMG_LEFT_LOWER) == conn(fmc.FACEMESH_RIGHT_EYEBROW)
    assert edges(mt.BROW_IMG_RIGHT_UPPER) | edges(mt.BROW_IMG_RIGHT_LOWER) == conn(fmc.FACEMESH_LEFT_EYEBROW)
    lips = (mt.LIP_UPPER_OUTER, mt.LIP_LOWER_OUTER, mt.LIP_UPPER_INNER, mt.LIP_LOWER_INNER)
    assert set().union(*map(edges, lips)) == conn(fmc.FACEMESH_LIPS)
    # the explicit nose loop is symmetric: mirroring maps it onto itself, reversed
    mirrored = tuple(mt.MIRROR_INDEX[list(mt.NOSE_LOOP)])
    assert mirrored[0] == mt.NOSE_LOOP[0] and mirrored[1:] == mt.NOSE_LOOP[1:][::-1]
    wings = {(48, 64), (64, 98), (97, 98), (2, 97), (2, 326), (326, 327), (294, 327), (278, 294)}
    assert wings <= conn(fmc.FACEMESH_NOSE) and wings <= edges(mt.NOSE_LOOP)


def test_mirror_index_is_an_involution():
    mi = mt.MIRROR_INDEX
    assert sorted(mi) == list(range(478)) and np.array_equal(mi[mi], np.arange(478))
    midline = np.nonzero(mi == np.arange(478))[0]
    assert {1, 4, 10, 13, 14, 152, 168} <= set(midline) and len(midline) == 28
    assert mi[33] == 263 and mi[61] == 291 and mi[468] == 473


def test_parts_are_sets_of_mesh_triangles():
    cls = pm.TRIANGLE_CLASS
    assert cls.shape == (len(mt.FACE_TRIANGLES),) and set(np.unique(cls)) == set(range(1, 10))
    holes = cls[len(mt.MESH_TRIANGLES):]  # the eye and mouth openings are exactly the hole patches
    assert set(holes) == {pm.LEFT_EYE, pm.RIGHT_EYE, pm.MOUTH}
    assert not np.isin(cls[: len(mt.MESH_TRIANGLES)], [pm.LEFT_EYE, pm.RIGHT_EYE, pm.MOUTH]).any()
    # mirror symmetry: the mirror image of a triangle has the same class, left and right swapped
    # (a few quads of the mesh are split along different diagonals on the two sides)
    swap = left_right_swap()
    tris = mt.FACE_TRIANGLES.tolist()
    index = {tuple(sorted(t)): k for k, t in enumerate(tris)}
    pairs = [(k, index.get(tuple(sorted(mt.MIRROR_INDEX[t].tolist())))) for k, t in enumerate(tris)]
    pairs = [(k, m) for k, m in pairs if m is not None]
    assert len(pairs) > 0.95 * len(cls)
    assert all(cls[m] == swap[cls[k]] for k, m in pairs)
    assert np.array_equal(np.bincount(swap[cls], minlength=10), np.bincount(cls, minlength=10))


def test_every_class_present_and_silhouette_is_depth(aligned_face, mask):
    assert mask.shape == (512, 512) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == set(range(10))
    assert np.array_equal(mask > 0, render_depth(aligned_face[1]) > 0)
    assert (mask == pm.SKIN).sum() > 0.5 * (mask > 0).sum()


def test_parts_lie_on_their_landmarks(aligned_face, mask):
    lm = aligned_face[1][:, :2] * 512 - 0.5
    for cls, loop in pm.PART_POLYGONS:
        pts = lm[list(loop)]
        x, y = centroid(mask, cls)
        lo, hi = pts.min(0), pts.max(0)
        assert lo[0] <= x <= hi[0] and lo[1] <= y <= hi[1], pm.CLASS_NAMES[cls]
        # most of the polygon's area is labelled with its class (the rest: later classes on top)
        poly = np.zeros_like(mask)
        cv2.fillPoly(poly, [np.round(pts).astype(np.int32)], 1)
        assert (mask[poly > 0] == cls).mean() > (0.5 if cls == pm.NOSE else 0.8), pm.CLASS_NAMES[cls]


def test_layout(mask):
    c = {k: centroid(mask, k) for k in range(1, 10)}
    x, y = 0, 1
    assert c[pm.LEFT_EYE][x] < c[pm.NOSE][x] < c[pm.RIGHT_EYE][x]
    assert c[pm.LEFT_BROW][x] < c[pm.RIGHT_BROW][x]
    assert c[pm.LEFT_BROW][y] < c[pm.LEFT_EYE][y] and c[pm.RIGHT_BROW][y] < c[pm.RIGHT_EYE][y]
    eyes_y = (c[pm.LEFT_EYE][y] + c[pm.RIGHT_EYE][y]) / 2
    assert eyes_y < c[pm.NOSE][y] < c[pm.UPPER_LIP][y]
    assert c[pm.UPPER_LIP][y] < c[pm.MOUTH][y] < c[pm.LOWER_LIP][y]


def test_left_is_the_image_left_also_when_mirrored(mask, mirrored_landmarks):
    """mediapipe labels by appearance, so class 3 stays on the image's left in a mirrored photo,
    and the mirrored photo's mask is the original's, flipped, with left and right swapped."""
    mm = pm.render_pseudo_mask(mirrored_landmarks)
    assert centroid(mm, pm.LEFT_EYE)[0] < centroid(mm, pm.RIGHT_EYE)[0]
    assert centroid(mm, pm.LEFT_BROW)[0] < centroid(mm, pm.RIGHT_BROW)[0]
    back = left_right_swap()[np.fliplr(mm)]
    assert (back == mask).mean() > 0.98
    for k in range(1, 10):
        iou = ((back == k) & (mask == k)).sum() / ((back == k) | (mask == k)).sum()
        assert iou > 0.6, pm.CLASS_NAMES[k]


def test_closed_mouth_and_bad_input(aligned_face):
    lm = aligned_face[1].copy()
    lm[list(mt.LIP_LOWER_INNER)] = lm[list(mt.LIP_UPPER_INNER)]  # close the mouth
    m = pm.render_pseudo_mask(lm)
    assert not (m == pm.MOUTH).any() and (m == pm.UPPER_LIP).any() and (m == pm.LOWER_LIP).any()
    with pytest.raises(ValueError):
        pm.render_pseudo_mask(np.zeros((478, 2), np.float32))
