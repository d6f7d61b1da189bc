"""Pseudo face mask stage (paper §3.4, "Pseudo Face Mask"): 10 classes from the dense landmarks.

The classes, the mesh triangles each covers and the colours are `geometry.mask`'s; the pixels
come from the item's one z-buffer (`item_zbuffer`), shared with the depth stage, so
``mask > 0`` is exactly ``depth > 0``.
"""
from __future__ import annotations

from denseface.annotators.base import Item, Stage, item_zbuffer
from denseface.geometry.mask import mask_from_zbuffer


class PseudoMask(Stage):
    name = "pseudo_mask"
    version = "1"

    def process_one(self, item: Item) -> None:
        item.arrays["mask"] = mask_from_zbuffer(item_zbuffer(item, self.build.crop_size)[1])
