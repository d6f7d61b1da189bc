"""The 10-class pseudo face mask: classes, their mesh triangles, rendering and colours (paper §3.4).

The paper outlines facial areas "such as the face shape, nose shape and eyebrow length"
from the dense landmarks; this module fixes how. Each part is a polygon of mediapipe
contours (`mesh` constants taken from the ``FACEMESH_*`` connections; the nose is
an explicit loop, as ``FACEMESH_NOSE`` is not a closed outline), turned once, on the
frontal `mesh.CANONICAL_FACE`, into the set of mesh triangles it contains
(`TRIANGLE_CLASS`); the eye and mouth openings are the triangles that close the mesh's
holes. A pixel's class is then the class of the nearest triangle covering it
(`raster.zbuffer`), so:

* class 1 (skin) is the rest of the face silhouette, and ``mask > 0`` is exactly
  ``depth > 0``: the mask and depth targets agree on what is face;
* parts move and fold with the mesh: in a profile view the far eye is hidden behind the
  nose as in the photo, and a closed mouth or eye has no interior pixels.

Left and right are the IMAGE's: "left eye" (3) is the eye on the image's left side, which
in a non-mirrored photo is the subject's right eye (mediapipe's ``FACEMESH_RIGHT_EYE``,
landmarks 33..133). mediapipe labels eyes by appearance, so in a mirrored photo class 3 is
still the eye on the image's left. Brows follow the same rule.

Colours: the published release stores masks in matplotlib's ``Paired`` colours, one per
class in class order (`PAIRED_BGR` as its reference code lists them; `colorize` gives RGB).
"""
from __future__ import annotations

import numpy as np

from denseface.geometry import mesh as mt
from denseface.geometry.raster import zbuffer

BACKGROUND, SKIN, NOSE, LEFT_EYE, RIGHT_EYE, LEFT_BROW, RIGHT_BROW, MOUTH, UPPER_LIP, LOWER_LIP = range(10)
NUM_CLASSES = 10
CLASS_NAMES: tuple[str, ...] = (
    "background", "skin", "nose", "left_eye", "right_eye", "left_brow", "right_brow",
    "mouth_interior", "upper_lip", "lower_lip",
)

# matplotlib "Paired" (first 10 colours), BGR, class order, as in the release's reference code.
PAIRED_BGR: tuple[tuple[int, int, int], ...] = (
    (227, 206, 166), (0, 127, 255), (111, 191, 253), (180, 120, 31), (153, 154, 251),
    (138, 223, 178), (214, 178, 202), (28, 26, 227), (154, 61, 106), (44, 160, 51),
)
PAIRED_RGB: np.ndarray = np.array(PAIRED_BGR, np.uint8)[:, ::-1].copy()


def _loop(first: tuple[int, ...], second: tuple[int, ...], shared_ends: bool) -> tuple[int, ...]:
    """Closed polygon: ``first`` forward, then ``second`` backward (dropping shared corners)."""
    back = second[::-1]
    return first + (back[1:-1] if shared_ends else back)


# Later entries win where polygons overlap.
PART_POLYGONS: tuple[tuple[int, tuple[int, ...]], ...] = (
    (NOSE, mt.NOSE_LOOP),
    (LEFT_BROW, _loop(mt.BROW_IMG_LEFT_LOWER, mt.BROW_IMG_LEFT_UPPER, False)),
    (RIGHT_BROW, _loop(mt.BROW_IMG_RIGHT_LOWER, mt.BROW_IMG_RIGHT_UPPER, False)),
    (LEFT_EYE, _loop(mt.EYE_IMG_LEFT_UPPER, mt.EYE_IMG_LEFT_LOWER, True)),
    (RIGHT_EYE, _loop(mt.EYE_IMG_RIGHT_UPPER, mt.EYE_IMG_RIGHT_LOWER, True)),
    (UPPER_LIP, _loop(mt.LIP_UPPER_OUTER, mt.LIP_UPPER_INNER, False)),
    (LOWER_LIP, _loop(mt.LIP_LOWER_OUTER, mt.LIP_LOWER_INNER, False)),
    (MOUTH, _loop(mt.LIP_UPPER_INNER, mt.LIP_LOWER_INNER, True)),
)


def _triangle_classes() -> np.ndarray:
    cls = np.full(len(mt.FACE_TRIANGLES), SKIN, np.uint8)
    for part, loop in PART_POLYGONS:
        cls[mt.triangles_inside(loop)] = part
    return cls


TRIANGLE_CLASS: np.ndarray = _triangle_classes()  # class id of each of mt.FACE_TRIANGLES
_PIXEL_CLASS = np.concatenate([TRIANGLE_CLASS, [BACKGROUND]]).astype(np.uint8)  # index -1: background


def render_pseudo_mask(landmarks: np.ndarray, size: int = 512) -> np.ndarray:
    """(size, size) uint8 class ids (see `CLASS_NAMES`) for one aligned crop's landmarks."""
    return _PIXEL_CLASS[zbuffer(landmarks, size)[1]]


def mask_from_zbuffer(tri: np.ndarray) -> np.ndarray:
    """`render_pseudo_mask` from the triangle plane of `raster.zbuffer` (-1 = background)."""
    return _PIXEL_CLASS[tri]


def colorize(mask: np.ndarray) -> np.ndarray:
    """RGB uint8 picture of a class-id mask in the release's ``Paired`` colours."""
    m = np.asarray(mask)
    if m.dtype.kind not in "ui" or (m.size and (m.min() < 0 or m.max() >= NUM_CLASSES)):
        raise ValueError(f"mask must hold class ids 0..{NUM_CLASSES - 1}")
    return PAIRED_RGB[m]
