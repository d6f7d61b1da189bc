"""Face detection as a cascade that stops at the first step that finds a face.

BlazeFace's full-range model is made for small, distant faces and misses faces that fill
the frame (CASIA-WebFace's 250 px crops, CelebA's aligned 178 px crops) and strongly
rolled heads; its short-range model is the reverse. Neither is mirror-symmetric. So the
detector tries, in order (each step named in the manifest's ``detector`` column):

1. ``blazeface_full`` on the photo;
2. the same on a copy padded with black (``+pad``): a face that fills the frame becomes
   one that the full-range model's anchors cover;
3. the same on copies rotated by ±30° and ±60° (``+rot30``, ``+rot-30``, ...): BlazeFace is
   trained on roughly upright faces;
4. ``blazeface_short`` on the photo, keeping only faces that span at least a third of it
   (its domain: a face that fills the frame). Tried earlier or on other copies it takes
   a rolled torso (the sample's ``camera.png`` rotated by 60°) or a pattern on a box
   (matplotlib's ``Minduka_Present_Blue_Pack.png``) for a face;
5. ``dlib_cnn``: dlib's MMOD CNN detector (``mmod_human_face_detector.dat``) with the
   68-point shape predictor for eyes and mouth, both from face-recognition-models.

A face found rolled by more than ``LEVEL_ABOVE`` degrees is detected once more on a copy
rotated to level it, by the same model: BlazeFace's keypoints on a strongly rolled face are
off by up to half the eye distance, and the alignment is built from them.

A "rescaled copy" step is not needed: both BlazeFace models resize their input to
128/192 px, so only the face's share of the frame matters, which padding changes.

The multi-face rules apply to the faces of the step that found any: a step stops the
cascade as soon as it finds one, so a group photo that the first step sees as several
faces stays rejected, and later, looser steps never see it.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from denseface.annotators.identity import dlib_weights_dir

DETECT_MAX_SIDE = 640  # BlazeFace sees 128/192 px anyway; dlib's CNN costs grow with pixels
PAD_FRACTION = 0.5  # black border, as a fraction of the longer side, on each side
ROTATIONS = (30.0, -30.0, 60.0, -60.0)  # degrees, counter-clockwise on screen (cv2's sign)
SHORT_MIN_SPAN = 1 / 3  # short-range faces must span this share of the photo's shorter side
LEVEL_ABOVE = 15.0  # degrees of eye-line roll above which a face is re-detected levelled
DLIB_MIN_SIDE = 320  # dlib's CNN finds faces of >= ~80 px: small photos are upsampled to this
DLIB_MIN_CONFIDENCE = 0.5  # MMOD's scores are margins around 0; real faces here score >= 0.9


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in source pixels
    score: float
    eye_left: np.ndarray  # the eye on the image's left (the subject's right eye)
    eye_right: np.ndarray
    mouth: np.ndarray
    detector: str = ""  # the cascade step that found it

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


# ---- copies of the photo and mapping faces back (pure) ------------------------------------

def scaled_copy(image: np.ndarray, max_side: int = DETECT_MAX_SIDE,
                min_side: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The image scaled so its longer side is at most ``max_side`` (and its shorter side at
    least ``min_side``, where that is allowed), and the 2x3 affine source -> copy."""
    h, w = image.shape[:2]
    f = min(max_side / max(h, w), max(1.0, min_side / min(h, w)))
    if f == 1.0:
        return image, np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    interp = cv2.INTER_AREA if f < 1.0 else cv2.INTER_LINEAR
    copy = cv2.resize(image, (max(1, round(w * f)), max(1, round(h * f))), interpolation=interp)
    return copy, np.array([[copy.shape[1] / w, 0.0, 0.0], [0.0, copy.shape[0] / h, 0.0]])


def padded_copy(image: np.ndarray, fraction: float = PAD_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """The image on a black border of ``fraction`` x its longer side, and the affine source -> copy."""
    p = int(round(fraction * max(image.shape[:2])))
    copy = cv2.copyMakeBorder(image, p, p, p, p, cv2.BORDER_CONSTANT, value=0)
    return copy, np.array([[1.0, 0.0, p], [0.0, 1.0, p]])


def rotated_copy(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """The image rotated about its centre (counter-clockwise on screen for ``degrees`` > 0)
    on a black canvas large enough to hold all of it, and the affine source -> copy."""
    h, w = image.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), degrees, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    cw, ch = int(np.ceil(w * c + h * s)), int(np.ceil(w * s + h * c))
    m[:, 2] += [(cw - w) / 2.0, (ch - h) / 2.0]
    return cv2.warpAffine(image, m, (cw, ch), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT), m


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 affine ``outer`` after ``inner``."""
    return (np.vstack([outer, [0.0, 0.0, 1.0]]) @ np.vstack([inner, [0.0, 0.0, 1.0]]))[:2]


def face_to_source(face: Face, to_copy: np.ndarray) -> Face:
    """A face found on a copy, in source pixels: keypoints mapped exactly, the box as the
    axis-aligned bounds of the copy box's mapped corners."""
    inv = cv2.invertAffineTransform(to_copy)
    x0, y0, x1, y1 = face.box
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]) @ inv[:, :2].T + inv[:, 2]
    pt = lambda p: np.asarray(p, np.float64) @ inv[:, :2].T + inv[:, 2]  # noqa: E731
    lo, hi = corners.min(0), corners.max(0)
    return replace(face, box=(float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])),
                   eye_left=pt(face.eye_left), eye_right=pt(face.eye_right), mouth=pt(face.mouth))


def order_eyes(face: Face) -> Face:
    """Name the eyes by the image side they are on in the face's own upright frame (the eye
    with the mouth to its left, looking from the eyes to the mouth, is the image's left one):
    a rotated copy must not swap them."""
    eyes = face.eye_right - face.eye_left
    down = face.mouth - (face.eye_left + face.eye_right) / 2.0
    if eyes[0] * down[1] - eyes[1] * down[0] >= 0:  # right-handed in image axes (y down)
        return face
    return replace(face, eye_left=face.eye_right, eye_right=face.eye_left)


# ---- detectors ----------------------------------------------------------------------------

class BlazeFace:
    """mediapipe BlazeFace (``full``: full-range, ``short``: short-range); faces in input pixels."""

    def __init__(self, model: str, min_score: float, min_span: float = 0.0) -> None:
        import mediapipe as mp

        self.name, self.min_span = f"blazeface_{model}", min_span
        self._det = mp.solutions.face_detection.FaceDetection(
            model_selection={"short": 0, "full": 1}[model], min_detection_confidence=min_score)

    def __call__(self, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        result = self._det.process(np.ascontiguousarray(rgb))
        faces = []
        for det in result.detections or []:
            bb = det.location_data.relative_bounding_box
            if min(bb.width * w, bb.height * h) < self.min_span * min(h, w):
                continue
            kp = np.array([[k.x * w, k.y * h] for k in det.location_data.relative_keypoints])
            # mediapipe keypoint 0 is the subject's right eye: the image's left one.
            faces.append(Face((bb.xmin * w, bb.ymin * h, (bb.xmin + bb.width) * w, (bb.ymin + bb.height) * h),
                              float(det.score[0]), kp[0], kp[1], kp[3], self.name))
        return faces


DLIB_CNN = "mmod_human_face_detector.dat"
DLIB_SHAPE_68 = "shape_predictor_68_face_landmarks.dat"


def dlib_models() -> Path:
    """face-recognition-models' folder holding the two files the dlib step needs; a missing
    file is a FileNotFoundError naming it and how to get it."""
    folder = dlib_weights_dir(None)
    for name in (DLIB_CNN, DLIB_SHAPE_68):
        if folder is None or not (folder / name).is_file():
            raise FileNotFoundError(f"face detection needs dlib's {name} (face-recognition-models): "
                                    f"pip install face-recognition-models")
    return folder


class DlibCNN:
    """dlib's MMOD CNN face detector; eyes and mouth from the 68-point shape predictor
    (iBUG 68: points 36-41 the subject's right eye, 42-47 the left, 48 and 54 the mouth corners)."""

    name = "dlib_cnn"

    def __init__(self, min_confidence: float = DLIB_MIN_CONFIDENCE) -> None:
        import dlib

        folder = dlib_models()
        self._dlib, self.min_confidence = dlib, min_confidence
        self._cnn = dlib.cnn_face_detection_model_v1(str(folder / DLIB_CNN))
        self._shape = dlib.shape_predictor(str(folder / DLIB_SHAPE_68))

    def __call__(self, rgb: np.ndarray) -> list[Face]:
        rgb = np.ascontiguousarray(rgb)
        faces = []
        for det in self._cnn(rgb, 0):
            if det.confidence < self.min_confidence:
                continue
            r = det.rect
            pts = np.array([[p.x, p.y] for p in self._shape(rgb, r).parts()], np.float64)
            faces.append(Face((float(r.left()), float(r.top()), float(r.right() + 1), float(r.bottom() + 1)),
                              float(det.confidence), pts[36:42].mean(0), pts[42:48].mean(0),
                              (pts[48] + pts[54]) / 2.0, self.name))
        return faces


# ---- the cascade --------------------------------------------------------------------------

Step = tuple[str, Callable[[np.ndarray], list[Face]], Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]]


class FaceDetector:
    """The cascade (module docstring): faces in source pixels, each with the step that found it."""

    def __init__(self, min_score: float) -> None:
        full = BlazeFace("full", min_score)
        short = BlazeFace("short", min_score, SHORT_MIN_SPAN)
        self._dlib: DlibCNN | None = None  # loaded on the first photo that needs it
        same = lambda im: (im, np.eye(2, 3))  # noqa: E731
        steps: list[Step] = [(full.name, full, same), (f"{full.name}+pad", full, padded_copy)]
        steps += [(f"{full.name}+rot{deg:g}", full, lambda im, a=deg: rotated_copy(im, a)) for deg in ROTATIONS]
        self.steps = steps + [(short.name, short, same)]

    @property
    def step_names(self) -> list[str]:
        return [name for name, _, _ in self.steps] + [DlibCNN.name]

    def __call__(self, rgb: np.ndarray) -> list[Face]:
        small, to_small = scaled_copy(rgb)
        for name, detect, make_copy in self.steps:
            copy, to_copy = make_copy(small)
            faces = [order_eyes(face_to_source(replace(f, detector=name), compose(to_copy, to_small)))
                     for f in detect(copy)]
            if faces:
                return [level(f, detect, small, to_small) for f in faces]
        copy, to_copy = scaled_copy(rgb, DETECT_MAX_SIDE, DLIB_MIN_SIDE)
        return [order_eyes(face_to_source(f, to_copy)) for f in self.dlib(copy)]

    @property
    def dlib(self) -> DlibCNN:
        if self._dlib is None:
            self._dlib = DlibCNN()
        return self._dlib


def eye_roll(face: Face) -> float:
    """Degrees by which the eye line dips towards the image's right (clockwise roll)."""
    dx, dy = face.eye_right - face.eye_left
    return float(np.degrees(np.arctan2(dy, dx)))


def level(face: Face, detect: Callable[[np.ndarray], list[Face]], small: np.ndarray,
          to_small: np.ndarray) -> Face:
    """``face`` with its keypoints from a copy rotated to level it, when it is rolled by more
    than ``LEVEL_ABOVE`` degrees and ``detect`` finds it there (the face whose eye centre is
    nearest, within one eye distance); else ``face`` as it is. ``small``, ``to_small``: the
    cascade's `scaled_copy` of the photo, which is rotated (not scaled again)."""
    roll = eye_roll(face)
    if abs(roll) <= LEVEL_ABOVE:
        return face
    copy, to_copy = rotated_copy(small, roll)
    m = compose(to_copy, to_small)
    centre = (face.eye_left + face.eye_right) / 2
    reach = float(np.linalg.norm(face.eye_right - face.eye_left))
    best, best_dist = face, reach
    for f in detect(copy):
        f = order_eyes(face_to_source(replace(f, detector=face.detector), m))
        dist = float(np.linalg.norm((f.eye_left + f.eye_right) / 2 - centre))
        if dist < best_dist:
            best, best_dist = replace(f, box=face.box, score=face.score), dist
    return best
