"""The head-pose condition image (geometry/pose_image.py)."""
from __future__ import annotations

import numpy as np
import pytest

from denseface.geometry.pose_image import axis_endpoints, draw_pose_axes


def _pixels(img: np.ndarray, color: str) -> np.ndarray:
    """(N, 2) x, y of the clearly red / green / blue pixels."""
    r, g, b = (img[..., i].astype(int) for i in range(3))
    sel = {"red": (r > 200) & (g < 80) & (b < 80),
           "green": (g > 200) & (r < 80) & (b < 80),
           "blue": (b > 200) & (r < 80) & (g < 80)}[color]
    ys, xs = np.nonzero(sel)
    return np.stack([xs, ys], 1)


def test_zero_pose_red_right_green_down_blue_point():
    size = 512
    img = draw_pose_axes(0, 0, 0, size=size)
    assert img.shape == (size, size, 3) and img.dtype == np.uint8
    c = size / 2
    red, green, blue = _pixels(img, "red"), _pixels(img, "green"), _pixels(img, "blue")
    # red: a horizontal segment from the centre to the right, length size/4
    assert len(red) > 100
    assert red[:, 0].min() >= c - 4 and red[:, 0].max() == pytest.approx(c + size / 4, abs=4)
    assert np.abs(red[:, 1] - c).max() <= 4
    # green: a vertical segment from the centre downwards
    assert len(green) > 100
    assert green[:, 1].min() >= c - 4 and green[:, 1].max() == pytest.approx(c + size / 4, abs=4)
    assert np.abs(green[:, 0] - c).max() <= 4
    # blue: towards the viewer, (nearly) a point at the centre
    assert 0 < len(blue) < 60
    assert np.abs(blue - c).max() <= 4


def test_positive_yaw_moves_blue_tip_left():
    """yaw > 0 (face turned towards the image's left, head_pose's convention): the blue
    (Z) axis tip goes to the left of the centre, x = cx + 2L*sin(-yaw) = cx - L at 30 deg."""
    size = 512
    c, L = size / 2, size / 4
    tip = axis_endpoints(30, 0, 0, (c, c), L)["z"]
    assert tip[0] == pytest.approx(c - L) and tip[1] == pytest.approx(c)
    blue = _pixels(draw_pose_axes(30, 0, 0, size=size), "blue")
    assert blue[:, 0].min() == pytest.approx(c - L, abs=4)
    assert blue[:, 0].max() <= c + 4
    left = _pixels(draw_pose_axes(-30, 0, 0, size=size), "blue")
    assert left[:, 0].max() == pytest.approx(c + L, abs=4)


def test_pitch_and_roll_directions():
    size, c, L = 512, 256.0, 128.0
    # pitch > 0 (head up): the blue tip goes up
    tip = axis_endpoints(0, 20, 0, (c, c), L)["z"]
    assert tip[0] == pytest.approx(c) and tip[1] < c
    assert _pixels(draw_pose_axes(0, 20, 0, size=size), "blue")[:, 1].min() < c - 50
    # roll > 0: the red tip goes down, the green tip left
    e = axis_endpoints(0, 0, 30, (c, c), L)
    assert e["x"][1] > c and e["y"][0] < c


def test_white_where_nothing_is_drawn_and_thickness_scales():
    img = draw_pose_axes(10, -5, 3, size=512)
    white = np.all(img == 255, axis=-1)
    assert white.mean() > 0.97
    assert white[:40, :40].all() and white[-40:, -40:].all()
    n512 = len(_pixels(draw_pose_axes(0, 0, 0, size=512), "red"))
    n128 = len(_pixels(draw_pose_axes(0, 0, 0, size=128), "red"))
    assert n512 > 8 * n128  # 4x the length, 4x the thickness


def test_canvas_center_length():
    canvas = np.zeros((100, 200, 3), np.uint8)
    out = draw_pose_axes(0, 0, 0, canvas=canvas, center=(50, 50), length=30)
    assert out.shape == canvas.shape and not canvas.any()  # the input is not modified
    red = _pixels(out, "red")
    assert red[:, 0].max() == pytest.approx(80, abs=2) and np.abs(red[:, 1] - 50).max() <= 2
    with pytest.raises(ValueError):
        draw_pose_axes(float("nan"), 0, 0)
    with pytest.raises(ValueError):
        draw_pose_axes(0, 0, 0, canvas=np.zeros((10, 10), np.uint8))
