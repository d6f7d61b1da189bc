"""Face depth map stage (paper §3.4, "Depth Map"): the mediapipe face mesh drawn as a surface.

Every pixel inside the mesh (`geometry.mesh.FACE_TRIANGLES`: the 852 mesh triangles plus the
closed eye and mouth openings) takes the z of the nearest triangle covering it, interpolated
barycentrically from the landmarks' z (z-buffer: the nearest surface wins where the mesh folds
over itself in a profile view). The maths and the stored value range are `geometry.raster`'s.
The face region (``depth > 0``) is the same pixel set as the pseudo mask's non-background: both
come from one z-buffer per item (`item_zbuffer`).
"""
from __future__ import annotations

from denseface.annotators.base import Item, Stage, item_zbuffer
from denseface.geometry.raster import depth_from_zbuffer


class Depth(Stage):
    name = "depth"
    version = "1"
    manifest_fields = {"face_area": "float32"}

    def process_one(self, item: Item) -> None:
        depth = depth_from_zbuffer(item_zbuffer(item, self.build.crop_size)[0])
        item.arrays["depth"] = depth
        item.fields["face_area"] = round(float((depth > 0).mean()), 5)
