"""Face detection and FFHQ-style alignment to a square crop (512 px by default).

Faces come from the detector cascade of `face_detectors` (BlazeFace full- and short-range
on the photo and on padded and rotated copies, then dlib's CNN); one face is required,
since a second one of similar size makes the identity of the image ambiguous. The FFHQ
recipe (Karras et al.) builds an oriented square from the eye centres and the mouth. The
detectors' keypoints for them are rough (BlazeFace's eye line wanders by 5-10° between a
photo and the same photo rotated), so they only give a first crop: the face mesh's eyes and
mouth corners on that crop place the final one, which levels the eyes to within a degree.
"""
from __future__ import annotations

from denseface.annotators.base import Item, Reject, Stage
from denseface.annotators.face_detectors import DLIB_CNN, DLIB_SHAPE_68, Face, FaceDetector, dlib_models
from denseface.annotators.head_pose import HeadPose
from denseface.annotators.identity import dlib_weights_dir
from denseface.annotators.landmarks import FaceMesh
from denseface.geometry.align import (
    crop_transform,
    ffhq_quad,
    loose_view,
    mesh_keypoints,
    pad_fraction,
    upright_quad,
    warp_face,
)
from denseface.model_refs import Resolved, resolve_file


def choose_face(faces: list[Face], min_face_px: float, area_ratio: float) -> Face:
    """The one face of the image, or Reject saying why there is none."""
    if not faces:
        raise Reject("no face detected")
    faces = sorted(faces, key=lambda f: f.area, reverse=True)
    rivals = [f for f in faces[1:] if f.area >= area_ratio * faces[0].area]
    if rivals:
        raise Reject(f"multiple faces: {1 + len(rivals)} of similar size (ambiguous identity)")
    face = faces[0]
    side = min(face.box[2] - face.box[0], face.box[3] - face.box[1])
    if side < min_face_px:
        raise Reject(f"face too small: {side:.0f} px < {min_face_px} px")
    return face


class DetectAlign(Stage):
    """Options: ``keep_roll`` (default false) aligns without levelling the eyes, so the crop
    and the crop-frame pose keep the photo's roll (`upright_quad`).

    Leaves ``item.scratch["loose_view"]`` (`loose_view`) when the head_pose stage runs
    Hopenet, which must see the unrotated face as in its training, not the levelled crop
    (no other stage uses it)."""

    name = "detect_align"
    version = "2"
    manifest_fields = {"detector": "string", "n_faces": "int32", "face_score": "float32", "bbox": "list<float32>",
                       "crop_transform": "list<float32>", "pad_fraction": "float32"}

    OPTIONS = frozenset({"keep_roll"})

    def check(self) -> None:
        unknown = set(self.conf.options) - self.OPTIONS
        if unknown:
            raise ValueError(f"detect_align: unknown options {sorted(unknown)}; known: {sorted(self.OPTIONS)}")
        dlib_models()  # the cascade's last step: a missing file fails here, before any work

    def weights(self) -> list[Resolved]:
        """The dlib files of the cascade's last step (`denseface weights check` lists them)."""
        folder = dlib_weights_dir(None)
        return [resolve_file(folder / name if folder else None, f"detect_align: dlib {name}",
                             "pip install face-recognition-models", "face-recognition-models (not installed)")
                for name in (DLIB_CNN, DLIB_SHAPE_68)]

    def setup(self) -> None:
        self._detector = FaceDetector(self.build.min_face_score)
        self._mesh = FaceMesh(self.build.min_face_score)
        self._loose_view = HeadPose.resolve_backend(self.build.stage(HeadPose.name).backend) == "hopenet"

    def process_one(self, item: Item) -> None:
        faces = self._detector(item.image)
        face = choose_face(faces, self.build.min_face_px, self.build.multi_face_area_ratio)
        size = self.build.crop_size
        keypoints = (face.eye_left, face.eye_right, face.mouth)
        first = crop_transform(ffhq_quad(*keypoints), size)
        lmk = self._mesh(warp_face(item.image, first, size))
        if lmk is not None:
            keypoints = mesh_keypoints(lmk, first, size)
        quad = ffhq_quad(*keypoints)
        matrix = crop_transform(upright_quad(quad) if self.conf.options.get("keep_roll") else quad, size)
        h, w = item.image.shape[:2]
        if self._loose_view:
            item.scratch["loose_view"] = loose_view(item.image, face.box)
        item.image = warp_face(item.image, matrix, size)
        scale = item.fields.get("decode_scale", 1.0)  # decoded = scale x source pixels
        item.fields.update(detector=face.detector, n_faces=len(faces), face_score=round(face.score, 4),
                           pad_fraction=round(pad_fraction(matrix, w, h, size), 4),
                           bbox=[round(v / scale, 2) for v in face.box],
                           crop_transform=[round(float(v), 6) for v in (matrix * [scale, scale, 1.0]).ravel()])
