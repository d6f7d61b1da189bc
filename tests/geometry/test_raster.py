"""Depth raster (geometry/raster.py, annotators/depth.py) and the mesh topology it shares with the pseudo mask."""
from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest
from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

from denseface.geometry import mesh as mt
from denseface.geometry.raster import DEPTH_FLOOR, rasterize, render_depth, silhouette
from denseface.shards.schema import decode_depth, encode_depth


def px(lm: np.ndarray, i: int) -> np.ndarray:
    return lm[i, :2] * 512 - 0.5  # (col, row) of landmark i


def test_topology_is_the_mesh_with_closed_holes():
    assert mt.MESH_TRIANGLES.shape == (852, 3)
    # every mesh triangle is a triangle of FACEMESH_TESSELATION, and no edge is used by more than two
    edges = {tuple(sorted(e)) for e in FACEMESH_TESSELATION}
    use = Counter(tuple(sorted(e)) for t in mt.FACE_TRIANGLES for e in ((t[0], t[1]), (t[1], t[2]), (t[0], t[2])))
    assert {tuple(sorted(e)) for t in mt.MESH_TRIANGLES for e in ((t[0], t[1]), (t[1], t[2]), (t[0], t[2]))} == edges
    assert max(use.values()) == 2
    # with the eyes and mouth closed, the only boundary left is the face oval
    boundary = {i for e, n in use.items() if n == 1 for i in e}
    assert boundary == set(mt.FACE_OVAL)


def test_depth_range_and_background(aligned_face):
    _, lm = aligned_face
    depth = render_depth(lm)
    assert depth.shape == (512, 512) and depth.dtype == np.float32
    face = depth > 0
    assert depth.max() == pytest.approx(1.0) and depth[face].min() == pytest.approx(DEPTH_FLOOR)
    oval = np.zeros((512, 512), np.uint8)
    cv2.fillPoly(oval, [np.round(lm[list(mt.FACE_OVAL), :2] * 512 - 0.5).astype(np.int32)], 1)
    near_oval = cv2.dilate(oval, np.ones((5, 5), np.uint8)).astype(bool)
    assert not (face & ~near_oval).any(), "depth outside the face oval"
    assert face[oval.astype(bool)].mean() > 0.97  # and the oval is filled: eyes and mouth included
    assert 20_000 < face.sum() < 150_000


def test_silhouette_has_no_holes(aligned_face):
    face = render_depth(aligned_face[1]) > 0
    assert np.array_equal(face, silhouette(aligned_face[1]))
    bg = (~face).astype(np.uint8)
    cv2.floodFill(bg, None, (0, 0), 0)  # the background is one region reached from the corner
    assert bg.sum() == 0
    for i in (159, 386, 13, 14):  # eye lids and inner lips lie inside the face region
        c, r = np.round(px(aligned_face[1], i)).astype(int)
        assert face[r, c]


def test_nose_tip_is_nearest(aligned_face):
    _, lm = aligned_face
    depth = render_depth(lm)
    r, c = np.unravel_index(np.argmax(depth), depth.shape)
    # mediapipe's nose tip: 1 (tip, lower) and 4 (pronasale); the nearest vertex is 4 or its neighbours
    assert min(np.hypot(*(np.array([c, r]) - px(lm, i))) for i in (1, 4)) < 10
    # and depth falls off from the nose over the cheeks to the sides of the face
    def at(i: int, inward: float = 0.0) -> float:
        p = px(lm, i)
        if inward:
            p = p + inward * (px(lm, 1) - p) / np.linalg.norm(px(lm, 1) - p)
        c, r = np.round(p).astype(int)
        return float(depth[r, c])

    assert at(1) > 0.9
    assert min(at(205), at(425)) > max(at(234, inward=4), at(454, inward=4)) > 0


def test_depth_interpolates_z_linearly(aligned_face):
    """With z a plane in (x, y), the rendered depth must be that plane (barycentric interpolation)."""
    lm = aligned_face[1].astype(np.float64).copy()
    lm[:, 2] = 0.3 * lm[:, 0] - 0.2 * lm[:, 1]
    depth = render_depth(lm)
    r, c = np.nonzero(depth > 0)
    a = np.column_stack([c, r, np.ones_like(c)]).astype(np.float64)
    coef, *_ = np.linalg.lstsq(a, depth[r, c], rcond=None)
    assert np.abs(a @ coef - depth[r, c]).max() < 1e-5
    assert coef[0] < 0 < coef[1]  # larger z to the right = farther = smaller depth


def test_nearest_surface_wins_where_the_mesh_folds(aligned_face):
    """Drag the nose tip over the cheek: in front, it must show; behind, the cheek must."""
    base = aligned_face[1].astype(np.float64)
    cheek = base[205, :2].copy()  # landmark 205 is on the image-left cheek
    for z, visible in ((base[:, 2].min() - 0.2, True), (base[:, 2].max() + 0.2, False)):
        lm = base.copy()
        lm[[1, 4], :2] = cheek
        lm[[1, 4], 2] = z
        depth = render_depth(lm)
        c, r = np.round(cheek * 512 - 0.5).astype(int)
        at_cheek = depth[r - 1:r + 2, c - 1:c + 2].max()
        if visible:
            assert at_cheek > 0.99
        else:
            assert 0.05 < at_cheek < 0.99


def test_raster_pairs_are_the_pixel_centres_inside_each_triangle(aligned_face):
    """Every (triangle, pixel) pair against a brute-force test of every pixel centre of every
    triangle: inside by more than rounding -> listed once, outside -> never; z on the plane."""
    size = 96
    lm = aligned_face[1].astype(np.float64)
    pix, z, tri = rasterize(lm, size)
    assert len(set(zip(pix.tolist(), tri.tolist()))) == pix.size  # no pair twice
    v = (lm[:, :2] * size - 0.5)[mt.FACE_TRIANGLES]  # (T, 3, 2)
    r, c = np.divmod(np.arange(size * size), size)
    listed = np.zeros((len(v), size * size), bool)
    listed[tri, pix] = True
    for k in np.flatnonzero(listed.any(1))[::7]:  # every 7th covering triangle: ~100 of them
        (x0, y0), (x1, y1), (x2, y2) = v[k]
        area = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        w = np.stack([(x1 - c) * (y2 - r) - (x2 - c) * (y1 - r), (x2 - c) * (y0 - r) - (x0 - c) * (y2 - r),
                      (x0 - c) * (y1 - r) - (x1 - c) * (y0 - r)]) / area  # barycentric weights
        assert listed[k, w.min(0) > 1e-6].all() and not listed[k, w.min(0) < -1e-6].any(), k
        mine = tri == k
        expect = (w[:, pix[mine]] * lm[mt.FACE_TRIANGLES[k], 2][:, None]).sum(0)
        assert np.allclose(z[mine], expect, atol=1e-9), k


def test_png_round_trip(aligned_face):
    depth = render_depth(aligned_face[1])
    data = encode_depth(depth)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    back = decode_depth(data)
    assert back.dtype == np.float32 and back.shape == depth.shape
    assert np.array_equal(back > 0, depth > 0)
    assert np.abs(back - depth).max() <= 0.5 / 65535 + 1e-7
    with pytest.raises(ValueError):
        decode_depth(cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes())


def test_degenerate_inputs():
    with pytest.raises(ValueError):
        render_depth(np.zeros((10, 3), np.float32))
    assert not render_depth(np.full((478, 3), 0.5, np.float32)).any()  # a collapsed mesh covers nothing
    lm = np.random.default_rng(0).uniform(2.0, 3.0, (478, 3)).astype(np.float32)  # entirely off the crop
    assert not render_depth(lm, size=64).any()


def test_depth_and_mask_stages_share_one_zbuffer(aligned_face):
    from denseface.annotators.base import Item
    from denseface.annotators.depth import Depth
    from denseface.annotators.pseudo_mask import PseudoMask
    from denseface.config import BuildConfig
    from denseface.geometry.mask import render_pseudo_mask

    crop, lm = aligned_face
    item = Item(key="k", identity="i", source="casia", source_path="-", unit=0, image=crop, arrays={"lmk": lm})
    cfg = BuildConfig()
    Depth(cfg).process([item])
    z, tri = item.scratch["zbuffer"]
    PseudoMask(cfg).process([item])
    assert item.scratch["zbuffer"][1] is tri  # computed once, reused by the mask stage
    assert np.array_equal(item.arrays["depth"], render_depth(lm))
    assert np.array_equal(item.arrays["mask"], render_pseudo_mask(lm))
