"""FFHQ-style alignment geometry: the crop square from eyes and mouth, the warp, and the views
the pose backends need.

The FFHQ recipe (Karras et al.) builds an oriented square from the eye centres and the mouth;
`mesh_keypoints` takes them from face-mesh landmarks, which level the eyes to within a degree.
"""
from __future__ import annotations

import cv2
import numpy as np

from denseface.geometry import mesh as mt

MESH_EYE_IMG_LEFT = sorted(set(mt.EYE_IMG_LEFT_UPPER + mt.EYE_IMG_LEFT_LOWER))
MESH_EYE_IMG_RIGHT = sorted(set(mt.EYE_IMG_RIGHT_UPPER + mt.EYE_IMG_RIGHT_LOWER))
MESH_MOUTH_CORNERS = (61, 291)


def ffhq_quad(eye_left: np.ndarray, eye_right: np.ndarray, mouth: np.ndarray) -> np.ndarray:
    """Corners (top-left, bottom-left, bottom-right, top-right) of the FFHQ crop square."""
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = mouth - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * np.array([-1.0, 1.0])
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * np.array([-1.0, 1.0])
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def crop_transform(quad: np.ndarray, size: int) -> np.ndarray:
    """2x3 affine taking source pixels to crop pixels."""
    src = quad[[0, 1, 3]].astype(np.float32)
    dst = np.array([[0, 0], [0, size], [size, 0]], dtype=np.float32)
    return cv2.getAffineTransform(src, dst)


def warp_face(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """Apply the crop transform, touching only the pixels under the crop: the region is
    cut out first, and a strong reduction is pre-shrunk with area averaging so the crop
    is not aliased (warpAffine samples, it does not average)."""
    inv = cv2.invertAffineTransform(matrix)
    corners = cv2.transform(np.array([[[0, 0], [size, 0], [size, size], [0, size]]], np.float32), inv)[0]
    h, w = image.shape[:2]
    x0, y0 = np.clip(np.floor(corners.min(0)).astype(int) - 2, 0, [w, h])
    x1, y1 = np.clip(np.ceil(corners.max(0)).astype(int) + 2, 0, [w, h])
    m = matrix.astype(np.float64) @ np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1]], dtype=np.float64)
    region = image[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < 0.5:
        small = cv2.resize(region, None, fx=2 * scale, fy=2 * scale, interpolation=cv2.INTER_AREA)
        fx, fy = small.shape[1] / region.shape[1], small.shape[0] / region.shape[0]
        m = m @ np.diag([1.0 / fx, 1.0 / fy, 1.0])
        region = small
    # Black padding, not FFHQ's reflection: a mirrored half-face would be a false face to
    # every later stage and to the trainer. ``pad_fraction`` lets users filter such crops.
    return cv2.warpAffine(region, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def mesh_keypoints(landmarks: np.ndarray, matrix: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
    """(eye on the image's left, the other eye, mouth) in source pixels from face-mesh
    landmarks of a ``size`` crop cut with ``matrix``: eye-contour centres and the midpoint of
    the mouth corners, as FFHQ takes them from dlib's 68 points."""
    inv = cv2.invertAffineTransform(np.asarray(matrix, np.float64))
    pts = np.asarray(landmarks, np.float64)[:, :2] * size @ inv[:, :2].T + inv[:, 2]
    return pts[MESH_EYE_IMG_LEFT].mean(0), pts[MESH_EYE_IMG_RIGHT].mean(0), pts[list(MESH_MOUTH_CORNERS)].mean(0)


def upright_quad(quad: np.ndarray) -> np.ndarray:
    """The same square turned about its centre to be axis-aligned: an alignment that keeps
    the head's roll in the crop instead of levelling the eyes."""
    c = quad.mean(0)
    half = np.hypot(*(quad[3] - quad[0])) / 2
    return c + half * np.array([[-1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [1.0, -1.0]])


def loose_view(image: np.ndarray, box: tuple[float, float, float, float], size: int = 224) -> np.ndarray:
    """The unrotated, loose face crop Hopenet was trained and run on (deep-head-pose's
    ``test_on_video_dlib``: the detector box widened by half its width on each side, raised
    by three quarters of its height and lowered by a quarter, clipped to the photo), scaled
    so its shorter side is ``size`` and centre-cropped to ``size`` x ``size``."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    x0, x1 = int(max(0, x0 - bw / 2)), int(min(w, x1 + bw / 2))
    y0, y1 = int(max(0, y0 - 3 * bh / 4)), int(min(h, y1 + bh / 4))
    region = image[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]
    f = size / min(region.shape[:2])
    rw, rh = max(size, round(region.shape[1] * f)), max(size, round(region.shape[0] * f))
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    scaled = cv2.resize(region, (rw, rh), interpolation=interp)
    top, left = (rh - size) // 2, (rw - size) // 2
    return np.ascontiguousarray(scaled[top:top + size, left:left + size])


def pad_fraction(matrix: np.ndarray, src_w: int, src_h: int, size: int) -> float:
    """Fraction of the crop that lies outside the source image (and is padding)."""
    corners = np.array([[0, 0], [src_w, 0], [src_w, src_h], [0, src_h]], dtype=np.float32)
    inside = cv2.transform(corners[None], matrix.astype(np.float32))[0]
    square = np.array([[0, 0], [size, 0], [size, size], [0, size]], dtype=np.float32)
    area, _ = cv2.intersectConvexConvex(inside, square)
    return float(np.clip(1.0 - area / float(size * size), 0.0, 1.0))
