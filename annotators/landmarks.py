"""mediapipe face mesh on the aligned crop: 478 points (468 + 10 iris), with z.

Stored as x, y in [0, 1] of the crop and z as mediapipe gives it (same scale as x,
smaller = nearer the camera).
"""
from __future__ import annotations

import numpy as np

from denseface.annotators.base import Item, Reject, Stage
from denseface.shards.schema import NUM_LANDMARKS


class FaceMesh:
    """The legacy ``mp.solutions`` face mesh (its tflite models ship in the 0.10.x wheel)."""

    def __init__(self, min_score: float = 0.5) -> None:
        import mediapipe as mp

        self._mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                                      refine_landmarks=True, min_detection_confidence=min_score)

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        result = self._mesh.process(np.ascontiguousarray(rgb))
        if not result.multi_face_landmarks:
            return None
        pts = result.multi_face_landmarks[0].landmark
        return np.array([(p.x, p.y, p.z) for p in pts], dtype=np.float32)


class Landmarks(Stage):
    name = "landmarks"
    version = "1"
    manifest_fields = {"lmk_in_frame": "float32"}

    def setup(self) -> None:
        self._mesh = FaceMesh(self.build.min_face_score)

    def process_one(self, item: Item) -> None:
        lmk = self._mesh(item.image)
        if lmk is None:
            raise Reject("face mesh found no face in the aligned crop")
        if lmk.shape != (NUM_LANDMARKS, 3):
            raise Reject(f"face mesh returned {lmk.shape[0]} points, expected {NUM_LANDMARKS}")
        item.arrays["lmk"] = lmk
        inside = (lmk[:, 0] >= 0) & (lmk[:, 0] <= 1) & (lmk[:, 1] >= 0) & (lmk[:, 1] <= 1)
        item.fields["lmk_in_frame"] = round(float(inside.mean()), 4)
