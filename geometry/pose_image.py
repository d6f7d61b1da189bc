"""The head-pose condition image: three axes drawn from yaw, pitch and roll (paper §3.2).

This is the image the Dense-Face pose branch takes as input; DESIGN.md §4 keeps it out of
the shards (it is cheap to derive), so the trainer renders it from the ``yaw``/``pitch``/
``roll`` of each sample, and ``denseface inspect`` overlays it on the contact sheet.

The projection is the one of the reference code (Hopenet's ``draw_axis``), yaw negated
first, angles in degrees, ``L`` the axis length and ``(cx, cy)`` the centre::

    pitch = p*pi/180, yaw = -(y*pi/180), roll = r*pi/180
    X: (L*cos(yaw)*cos(roll),   L*(cos(pitch)*sin(roll) + cos(roll)*sin(pitch)*sin(yaw)))
    Y: (-L*cos(yaw)*sin(roll),  L*(cos(pitch)*cos(roll) - sin(pitch)*sin(yaw)*sin(roll)))
    Z: (2L*sin(yaw),            -2L*cos(yaw)*sin(pitch))

Colours: X red, Y green, Z blue, in the returned RGB array (the reference draws with cv2 in
BGR, where X's ``(0, 0, 255)`` is red; here the colours are given as RGB, so the picture is
the same).

What the picture shows, image coordinates (x right, y down):

* yaw = pitch = roll = 0: X (red) points right, Y (green) points down, Z (blue) towards the
  viewer, so it collapses to a dot at the centre;
* yaw > 0 (in `denseface.geometry.pose`'s convention the face turns towards the
  IMAGE's left) moves the blue tip left: ``x = cx + 2L*sin(-yaw)`` < cx; the red axis shortens;
* pitch > 0 (head up) moves the blue tip up (y < cy);
* roll > 0 turns the red axis downwards (its tip's y grows) and the green axis to the left.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

X_RGB, Y_RGB, Z_RGB = (255, 0, 0), (0, 255, 0), (0, 0, 255)
BACKGROUND_RGB = (255, 255, 255)


def axis_endpoints(yaw: float, pitch: float, roll: float, center: tuple[float, float],
                   length: float) -> dict[str, tuple[float, float]]:
    """Tips of the X, Y and Z axes (float pixel coordinates), reference-code projection."""
    p = pitch * math.pi / 180.0
    y = -(yaw * math.pi / 180.0)
    r = roll * math.pi / 180.0
    cx, cy = center
    L = length
    x1 = L * (math.cos(y) * math.cos(r)) + cx
    y1 = L * (math.cos(p) * math.sin(r) + math.cos(r) * math.sin(p) * math.sin(y)) + cy
    x2 = L * (-math.cos(y) * math.sin(r)) + cx
    y2 = L * (math.cos(p) * math.cos(r) - math.sin(p) * math.sin(y) * math.sin(r)) + cy
    x3 = 2 * L * (math.sin(y)) + cx
    y3 = 2 * L * (-math.cos(y) * math.sin(p)) + cy
    return {"x": (x1, y1), "y": (x2, y2), "z": (x3, y3)}


def draw_pose_axes(yaw: float, pitch: float, roll: float, size: int = 512,
                   canvas: np.ndarray | None = None, center: tuple[float, float] | None = None,
                   length: float | None = None, thickness: int | None = None) -> np.ndarray:
    """RGB uint8 head-pose image: X red, Y green, Z blue (see the module docstring).

    ``canvas`` None: a white ``size`` x ``size`` image; otherwise an (H, W, 3) RGB uint8
    image that is copied and drawn on (``size`` is then ignored). ``center`` defaults to the
    middle of the image, ``length`` (X and Y; Z is twice as long, as in the reference) to a
    quarter of the image's shorter side, so every axis stays inside the frame. The line
    thickness (default) scales with the image: 4 px at 512.
    """
    for name, v in (("yaw", yaw), ("pitch", pitch), ("roll", roll)):
        if v is None or not math.isfinite(float(v)):
            raise ValueError(f"draw_pose_axes: {name} must be a finite number of degrees, got {v!r}")
    if canvas is None:
        if size < 1:
            raise ValueError(f"draw_pose_axes: size must be >= 1, got {size}")
        img = np.full((size, size, 3), BACKGROUND_RGB, np.uint8)
    else:
        c = np.asarray(canvas)
        if c.ndim != 3 or c.shape[2] != 3:
            raise ValueError(f"draw_pose_axes: canvas must be (H, W, 3) RGB, got {c.shape}")
        img = np.ascontiguousarray(c, dtype=np.uint8).copy()
    h, w = img.shape[:2]
    side = min(h, w)
    if center is None:
        center = (w / 2.0, h / 2.0)
    if length is None:
        length = side / 4.0
    if thickness is None:
        thickness = max(1, int(round(side / 128.0)))
    tips = axis_endpoints(float(yaw), float(pitch), float(roll), center, float(length))
    shift = 4  # sub-pixel precision for cv2 (coordinates * 16)
    scale = 1 << shift

    def pt(xy: tuple[float, float]) -> tuple[int, int]:
        return int(round(xy[0] * scale)), int(round(xy[1] * scale))

    c0 = pt(center)
    for axis, color in (("x", X_RGB), ("y", Y_RGB), ("z", Z_RGB)):  # the reference's order
        cv2.line(img, c0, pt(tips[axis]), color, thickness, cv2.LINE_AA, shift)
    return img
