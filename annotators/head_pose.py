"""Head pose (yaw, pitch, roll in degrees) stage: PnP from the landmarks (the offline default) or Hopenet.

The paper estimates pose with Hopenet (`denseface.model.hopenet.HopenetPose`, the "real"
backend, which needs its weights); ``pnp`` needs nothing beyond the landmarks
(`geometry.pose.pose_from_landmarks`). The sign convention and the two stored frames (crop:
``yaw``/``pitch``/``roll``; source photo: ``*_src``) are documented in `geometry.pose`.
"""
from __future__ import annotations

from denseface.annotators.base import Item, Stage
from denseface.geometry.pose import crop_frame_pose, pose_from_landmarks, source_frame_pose
from denseface.model_refs import Resolved, expand, require, resolve_file


def _rounded(prefix: str, angles) -> dict[str, float]:
    return {f"{name}{prefix}": round(float(v), 3) for name, v in zip(("yaw", "pitch", "roll"), angles)}


class HeadPose(Stage):
    """Backends: ``pnp`` (default, offline) and ``hopenet`` (weights: the published
    ``hopenet_robust_alpha1.pkl``). Both report both frames (module docstring): PnP fits the
    crop's landmarks (crop frame); Hopenet sees the unrotated loose crop of the photo that
    ``detect_align`` leaves in ``item.scratch["loose_view"]``, as in its training (source
    frame). The PnP angles are always kept too (``*_pnp``, crop frame), so the two backends
    can be compared wherever Hopenet ran."""

    name = "head_pose"
    version = "2"
    manifest_fields = {"yaw": "float32", "pitch": "float32", "roll": "float32",
                       "yaw_src": "float32", "pitch_src": "float32", "roll_src": "float32", "pose_backend": "string",
                       "yaw_pnp": "float32", "pitch_pnp": "float32", "roll_pnp": "float32"}
    BACKENDS = ("pnp", "hopenet")

    def check(self) -> None:
        require(self.weights())

    def weights(self) -> list[Resolved]:
        if self.backend != "hopenet":
            return []
        from denseface.model.hopenet import WEIGHTS_HELP

        return [resolve_file(self.conf.weights, "head_pose: Hopenet weights (hopenet_robust_alpha1.pkl)", WEIGHTS_HELP,
                             "stages.head_pose.weights", self.conf.sha256)]

    def setup(self) -> None:
        self._hopenet = None
        if self.backend == "hopenet":
            from denseface.model.hopenet import HopenetPose

            self._hopenet = HopenetPose(expand(self.conf.weights), self.device())

    def process_batch(self, items: list[Item]) -> None:
        for item in items:
            crop = pose_from_landmarks(item.arrays["lmk"], self.build.crop_size)
            item.fields.update(_rounded("_pnp", crop), pose_backend="pnp")
            item.fields.update(_rounded("", crop), **_rounded("_src", source_frame_pose(
                *crop, item.fields["crop_transform"])))
        if self._hopenet is not None:
            for item, src in zip(items, self._hopenet.predict_batch([it.scratch["loose_view"] for it in items])):
                item.fields.update(_rounded("_src", src), pose_backend="hopenet")
                item.fields.update(_rounded("", crop_frame_pose(*src, item.fields["crop_transform"])))
