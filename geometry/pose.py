"""Head-pose maths: Euler angles and rotations, the crop and source frames, and PnP from landmarks.

A PnP fit (`cv2.solvePnP`) of the 468 mesh points to `mesh.CANONICAL_FACE`, with a pinhole camera
of focal length = image width and the principal point at the image centre, gives the pose from
the landmarks alone (the head-pose stage's offline backend, generation, evaluation).

Sign convention (shared by both backends and stored in the sample json), that of Hopenet
on 300W-LP as drawn by deep-head-pose's ``utils.draw_axis``:

* yaw > 0: the face turns towards the IMAGE's left (the subject turns to their right);
* pitch > 0: the face looks up;
* roll > 0: the head is rotated clockwise as seen in the image (its top moves towards the
  image's right);

and all three are 0 for a face looking straight into the camera (zero pitch: the face-oval
plane of `CANONICAL_FACE` faces the camera). Mirroring an image negates yaw and roll and
keeps pitch.

Two frames are stored. ``yaw``, ``pitch``, ``roll`` are in the **crop** frame: that of the
stored 512 crop (and of the pose image the trainer draws from them). The FFHQ alignment
levels the eyes, so the crop-frame roll is near 0 unless ``detect_align`` keeps roll.
``yaw_src``, ``pitch_src``, ``roll_src`` are in the **source photo's** frame: the crop's
in-plane rotation undone (`source_frame_pose`). A head tilted 20° clockwise in the photo has
``roll_src`` ≈ 20 and ``roll`` ≈ 0.

As a matrix: the head-to-camera rotation, in OpenCV camera axes (x right, y down, z away
from the camera) and the canonical face's axes (x to the subject's left, y down, z to the
back of the head), is ``R = Rx(-pitch) @ Ry(yaw) @ Rz(roll)``: the same composition order
as 300W-LP's (pitch, yaw, roll) with the signs above. `matrix_from_euler` and
`euler_from_matrix` convert; the latter has yaw in [-90, 90].
"""
from __future__ import annotations

import cv2
import numpy as np

from denseface.geometry.mesh import CANONICAL_FACE, N_MESH, as_landmarks


def _rx(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def matrix_from_euler(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Head-to-camera rotation for angles in degrees (module docstring convention)."""
    y, p, r = np.radians([yaw, pitch, roll])
    return _rx(-p) @ _ry(y) @ _rz(r)


def euler_from_matrix(rot: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of a head-to-camera rotation; inverse of `matrix_from_euler`."""
    m = np.asarray(rot, np.float64)
    yaw = np.arcsin(np.clip(m[0, 2], -1.0, 1.0))
    pitch = -np.arctan2(-m[1, 2], m[2, 2])
    roll = np.arctan2(-m[0, 1], m[0, 0])
    return float(np.degrees(yaw)), float(np.degrees(pitch)), float(np.degrees(roll))


def crop_rotation(crop_transform) -> float:
    """Degrees by which the crop transform (2x3, source -> crop pixels) turns the photo,
    clockwise on screen (image axes: x right, y down) for > 0."""
    m = np.asarray(crop_transform, np.float64).reshape(2, 3)
    return float(np.degrees(np.arctan2(m[1, 0], m[0, 0])))


def rotate_in_plane(yaw: float, pitch: float, roll: float, degrees: float) -> tuple[float, float, float]:
    """The pose of the same head in the image turned clockwise by ``degrees``: an image
    rotation about the optical axis is ``Rz`` applied after the head-to-camera rotation."""
    return euler_from_matrix(_rz(np.radians(degrees)) @ matrix_from_euler(yaw, pitch, roll))


def source_frame_pose(yaw: float, pitch: float, roll: float, crop_transform) -> tuple[float, float, float]:
    """Crop-frame pose -> the source photo's frame: R_src = Rz(-phi) R_crop, phi = `crop_rotation`."""
    return rotate_in_plane(yaw, pitch, roll, -crop_rotation(crop_transform))


def crop_frame_pose(yaw: float, pitch: float, roll: float, crop_transform) -> tuple[float, float, float]:
    """Source-frame pose -> the crop's frame (inverse of `source_frame_pose`)."""
    return rotate_in_plane(yaw, pitch, roll, crop_rotation(crop_transform))


def camera_matrix(image_size: int = 512) -> np.ndarray:
    """Pinhole intrinsics assumed for the aligned crop: focal = width, centred principal point."""
    f = float(image_size)
    return np.array([[f, 0.0, f / 2], [0.0, f, f / 2], [0.0, 0.0, 1.0]])


def pose_from_landmarks(landmarks: np.ndarray, image_size: int = 512) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees of the face whose mediapipe landmarks are given.

    ``landmarks``: (478, 3), x and y in [0, 1] of the ``image_size`` crop (z is not used: the
    depth comes from the canonical face). SQPnP gives the global optimum, which
    Levenberg-Marquardt then refines on the reprojection error.
    """
    lm = as_landmarks(landmarks)
    image_pts = np.ascontiguousarray(lm[:N_MESH, :2], np.float64) * image_size
    object_pts = np.ascontiguousarray(CANONICAL_FACE, np.float64)
    k, dist = camera_matrix(image_size), np.zeros(4)
    ok, rvec, tvec = cv2.solvePnP(object_pts, image_pts, k, dist, flags=cv2.SOLVEPNP_SQPNP)
    if not ok:
        raise RuntimeError("solvePnP found no head pose")
    rvec, tvec = cv2.solvePnPRefineLM(object_pts, image_pts, k, dist, rvec, tvec)
    return euler_from_matrix(cv2.Rodrigues(rvec)[0])
