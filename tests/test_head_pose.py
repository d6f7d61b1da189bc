"""Head pose from landmarks (annotators/head_pose.py): conventions, PnP accuracy, real photos."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from denseface.annotators import mesh_topology as mt
from denseface.annotators.head_pose import (
    camera_matrix,
    euler_from_matrix,
    matrix_from_euler,
    pose_from_landmarks,
)
from tests.conftest import face_mesh, photo_face


@pytest.fixture(scope="module")
def turned_face() -> tuple[np.ndarray, np.ndarray]:
    """A real face turned (the sample photo "biden", yaw about -9) and tilted: the aligned crop
    (alignment levels the eyes) rotated 12 degrees clockwise, i.e. a roll of about +12."""
    crop, _ = photo_face("biden")
    rot = cv2.getRotationMatrix2D((255.5, 255.5), -12, 1.0)
    tilted = cv2.warpAffine(crop, rot, (512, 512), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return tilted, face_mesh(tilted)


def project(yaw: float, pitch: float, roll: float, distance: float = 40.0) -> np.ndarray:
    """(478, 3) landmarks of the canonical face posed and seen by the 512 px pinhole camera."""
    cam = mt.CANONICAL_FACE @ matrix_from_euler(yaw, pitch, roll).T + [0.0, 0.0, distance]
    uv = cam @ camera_matrix(512).T
    lm = np.zeros((478, 3), np.float32)
    lm[:468, :2] = uv[:, :2] / uv[:, 2:] / 512
    lm[:468, 2] = (cam[:, 2] - distance) / 20  # unused by the PnP
    return lm


def test_euler_round_trip_and_sign_semantics():
    rng = np.random.default_rng(1)
    for ang in rng.uniform(-80, 80, (50, 3)):
        rot = matrix_from_euler(*ang)
        assert np.allclose(rot @ rot.T, np.eye(3)) and np.isclose(np.linalg.det(rot), 1)
        assert np.allclose(euler_from_matrix(rot), ang, atol=1e-6)
    px = lambda lm, i: lm[i, :2] * 512  # noqa: E731
    zero = project(0, 0, 0)
    assert abs(px(zero, 1)[0] - 256) < 1e-3  # the frontal face is centred and symmetric
    assert px(project(20, 0, 0), 1)[0] < 256 - 10  # yaw > 0: the nose turns to the image's left
    assert px(project(0, 20, 0), 1)[1] < px(zero, 1)[1] - 10  # pitch > 0: looks up
    tilted = project(0, 0, 20)  # roll > 0: clockwise, the image-right eye drops
    assert px(tilted, 263)[1] > px(tilted, 33)[1] + 20
    assert px(tilted, 10)[0] > px(tilted, 152)[0]  # the top of the head moves to the image's right


@pytest.mark.parametrize("angles", [(0, 0, 0), (30, 0, 0), (-30, 0, 0), (0, 30, 0), (0, -30, 0),
                                    (0, 0, 30), (0, 0, -30), (25, -20, 15), (-28, 22, -30)])
def test_pnp_recovers_known_rotations(angles):
    assert np.allclose(pose_from_landmarks(project(*angles)), angles, atol=1e-3)


def test_pnp_with_noisy_landmarks():
    rng = np.random.default_rng(0)
    for ang in rng.uniform(-30, 30, (20, 3)):
        lm = project(*ang)
        lm[:468, :2] += rng.normal(0, 1.0 / 512, (468, 2))  # 1 px noise
        assert np.abs(np.array(pose_from_landmarks(lm)) - ang).max() < 1.0


def test_canonical_face_is_symmetric_and_frontal():
    c = mt.CANONICAL_FACE
    flipped = c * [-1, 1, 1]
    assert np.abs(flipped[mt.MIRROR_INDEX[:468]] - c).max() < 0.011  # stored to 0.01 cm
    assert c[1, 2] < c[:, 2].mean() and c[4, 2] == pytest.approx(c[:, 2].min(), abs=0.2)  # nose nearest
    assert c[263, 0] > 0 > c[33, 0] and c[10, 1] < c[1, 1] < c[152, 1]  # x: subject's left, y: down
    assert np.linalg.norm(c[263] - c[33]) == pytest.approx(9.0, abs=0.02)


def test_derive_canonical_face_from_real_meshes(aligned_face, turned_face):
    meshes = [aligned_face[1], turned_face[1]]
    c = mt.derive_canonical_face(meshes)
    assert np.abs(c * [-1, 1, 1] - c[mt.MIRROR_INDEX[:468]]).max() < 1e-9
    assert c[263, 0] > 0 and c[10, 1] < c[152, 1] and c[4, 2] < 0
    # two faces give a model close to the stored one (made from five) up to a few millimetres
    assert np.median(np.linalg.norm(c - mt.CANONICAL_FACE, axis=1)) < 0.5


def test_frontal_photo(aligned_face):
    yaw, pitch, roll = pose_from_landmarks(aligned_face[1])
    assert abs(yaw) < 5 and abs(pitch) < 10 and abs(roll) < 5


def test_mirrored_photo_flips_yaw_and_roll(aligned_face, turned_face):
    for crop, lm in (turned_face, aligned_face):
        yaw, pitch, roll = pose_from_landmarks(lm)
        m_yaw, m_pitch, m_roll = pose_from_landmarks(face_mesh(np.fliplr(crop)))
        assert abs(yaw + m_yaw) < 3 and abs(roll + m_roll) < 3 and abs(pitch - m_pitch) < 3
    yaw, _, roll = pose_from_landmarks(turned_face[1])
    assert abs(yaw) > 5 and abs(roll) > 5  # so the sign flip above is a real one
    m_yaw, _, m_roll = pose_from_landmarks(face_mesh(np.fliplr(turned_face[0])))
    assert np.sign(m_yaw) == -np.sign(yaw) and np.sign(m_roll) == -np.sign(roll)


def test_in_plane_rotation_is_roll(aligned_face):
    crop, lm = aligned_face
    yaw, pitch, roll = pose_from_landmarks(lm)
    # cv2: positive angle = counter-clockwise on screen, i.e. a negative roll
    rot = cv2.getRotationMatrix2D((255.5, 255.5), 15, 1.0)
    turned = cv2.warpAffine(crop, rot, (512, 512), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    yaw2, pitch2, roll2 = pose_from_landmarks(face_mesh(turned))
    assert roll2 - roll == pytest.approx(-15, abs=3)
    assert abs(yaw2 - yaw) < 3 and abs(pitch2 - pitch) < 3
