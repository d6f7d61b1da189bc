"""Face depth map rasterised from the mediapipe mesh (paper §3.4, "Depth Map").

The depth target is the mediapipe face mesh itself, drawn as a surface: every pixel inside
the mesh (`mesh_topology.FACE_TRIANGLES`: the 852 mesh triangles plus the closed eye and
mouth openings) takes the z of the nearest triangle covering it, interpolated
barycentrically from the landmarks' z (z-buffer: the nearest surface wins where the mesh
folds over itself in a profile view).

Stored values (DESIGN §4, ``depth.png``):

* background is exactly 0;
* a face pixel is ``DEPTH_FLOOR + (1 - DEPTH_FLOOR) * (z_far - z) / (z_far - z_near)`` over
  the face's own z range, so 1 is the nearest face pixel (the nose tip), and the farthest
  face pixel is ``DEPTH_FLOOR`` = 1/65535, the smallest non-zero 16-bit code: larger means
  nearer, and "face or background" survives the 16-bit PNG round trip exactly.

The face region (``depth > 0``) is the same pixel set as the pseudo mask's non-background:
both come from `mesh_topology.zbuffer`.
"""
from __future__ import annotations

import numpy as np

from denseface.annotators.base import Item, Stage
from denseface.annotators.mesh_topology import item_zbuffer, zbuffer

DEPTH_FLOOR = 1.0 / 65535  # the smallest non-zero code of the 16-bit PNG (shards.schema.encode_depth)


def render_depth(landmarks: np.ndarray, size: int = 512) -> np.ndarray:
    """(size, size) float32 depth of the face: 0 background, (0, 1] face, larger = nearer.

    ``landmarks``: (478, 3) mediapipe landmarks of the aligned crop (x, y in [0, 1], z in x's
    scale, smaller = nearer). Landmarks outside the crop are clipped by the raster.
    """
    return depth_from_zbuffer(zbuffer(landmarks, size)[0])


def depth_from_zbuffer(z: np.ndarray) -> np.ndarray:
    """`render_depth` from the z plane of `mesh_topology.zbuffer` (``inf`` = background)."""
    size = z.shape[0]
    zbuf = z.ravel()
    face = np.isfinite(zbuf)
    out = np.zeros(size * size, np.float32)
    if face.any():
        zf = zbuf[face]
        near, far = zf.min(), zf.max()
        out[face] = DEPTH_FLOOR + (1.0 - DEPTH_FLOOR) * (far - zf) / max(far - near, 1e-12)
    return out.reshape(size, size)


class Depth(Stage):
    name = "depth"
    version = "1"
    manifest_fields = {"face_area": "float32"}

    def process_one(self, item: Item) -> None:
        depth = depth_from_zbuffer(item_zbuffer(item, self.build.crop_size)[0])
        item.arrays["depth"] = depth
        item.fields["face_area"] = round(float((depth > 0).mean()), 5)
