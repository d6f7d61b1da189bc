"""Head pose from landmarks (geometry/pose.py, annotators/head_pose.py): conventions, PnP accuracy, real photos."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from denseface.annotators.base import Item
from denseface.annotators.detect_align import DetectAlign
from denseface.annotators.head_pose import HeadPose
from denseface.annotators.landmarks import Landmarks
from denseface.config import BuildConfig, StageConfig
from denseface.geometry import mesh as mt
from denseface.geometry.align import loose_view
from denseface.geometry.pose import (
    camera_matrix,
    crop_frame_pose,
    crop_rotation,
    euler_from_matrix,
    matrix_from_euler,
    pose_from_landmarks,
    rotate_in_plane,
    source_frame_pose,
)
from tests.conftest import face_mesh, photo_face
from tests.face_variants import SINGLE_FACE, decoded, mirrored, rolled


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


# ---- which frame: crop (stored image) and source photo ------------------------------------

_STAGES: dict[str, tuple] = {}


def pose_fields(image: np.ndarray, cfg: BuildConfig | None = None) -> dict:
    """The fields detect_align, landmarks and head_pose give an RGB photo."""
    cfg = cfg or BuildConfig()
    item = Item(key="k", identity="i", source="casia", source_path="", unit=0, image=np.ascontiguousarray(image))
    key = cfg.model_dump_json()
    if key not in _STAGES:  # models load once per configuration
        _STAGES[key] = (DetectAlign(cfg), Landmarks(cfg), HeadPose(cfg))
    for stage in _STAGES[key]:
        stage.process([item])
    assert item.ok, item.reason
    return item.fields | {"lmk": item.arrays["lmk"]} | {k: v for k, v in item.scratch.items() if k == "loose_view"}


def angles(fields: dict, suffix: str = "") -> np.ndarray:
    return np.array([fields[f"{n}{suffix}"] for n in ("yaw", "pitch", "roll")])


def test_frame_conversion_is_the_crop_rotation():
    # a crop transform that turns the photo 25 degrees clockwise on screen (cv2: -25)
    m = cv2.getRotationMatrix2D((100.0, 80.0), -25, 0.7)
    assert crop_rotation(m) == pytest.approx(25)
    assert source_frame_pose(0, 0, 25, m) == pytest.approx((0, 0, 0), abs=1e-9)  # levelled by the crop
    rng = np.random.default_rng(3)
    for ang in rng.uniform(-40, 40, (20, 3)):
        src = source_frame_pose(*ang, m)
        assert np.allclose(crop_frame_pose(*src, m), ang, atol=1e-6)
        assert np.allclose(matrix_from_euler(*ang), rotate_matrix(25) @ matrix_from_euler(*src), atol=1e-9)


def rotate_matrix(degrees: float) -> np.ndarray:
    a = np.radians(degrees)
    return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])


@pytest.mark.parametrize("stem", ["obama2", "biden"])
def test_rotated_photo_changes_roll_src_by_the_angle(stem):
    photo = decoded(stem)
    base = pose_fields(photo)
    for clockwise in (15, -15, 30, -30):
        turned = pose_fields(rolled(photo, -clockwise)[0])  # cv2's angle is counter-clockwise
        d_roll = turned["roll_src"] - base["roll_src"]
        assert d_roll == pytest.approx(clockwise, abs=2), (clockwise, d_roll)  # roll > 0: clockwise
        # exactly: the same head seen by a camera rolled the other way (yaw and pitch mix in
        # this Euler order when the head is turned, so they are not simply unchanged)
        expected = rotate_in_plane(*angles(base, "_src"), clockwise)
        assert np.abs(angles(turned, "_src") - expected).max() < 2, (clockwise, angles(turned, "_src"), expected)
        assert np.abs(angles(turned) - angles(base)).max() < 2, (clockwise, angles(turned) - angles(base))


def test_mirrored_photos_negate_yaw_src_and_roll_src():
    sums = []
    for stem in SINGLE_FACE:
        photo = decoded(stem)
        a, b = angles(pose_fields(photo), "_src"), angles(pose_fields(mirrored(photo)[0]), "_src")
        sums.append([a[0] + b[0], a[1] - b[1], a[2] + b[2]])
    mean_abs = np.abs(np.array(sums)).mean(0)
    print("mean |yaw+yaw_m|, |pitch-pitch_m|, |roll+roll_m| over the sample:", mean_abs.round(2))
    assert (mean_abs < 2).all(), mean_abs


def test_keep_roll_alignment_keeps_the_photo_roll():
    photo = rolled(decoded("obama2"), -20)[0]  # head tilted 20 degrees clockwise
    levelled = pose_fields(photo)
    kept = pose_fields(photo, BuildConfig(stages={"detect_align": StageConfig(options={"keep_roll": True})}))
    assert abs(levelled["roll"]) < 5 and levelled["roll_src"] > 12
    assert crop_rotation(kept["crop_transform"]) == pytest.approx(0, abs=1e-6)
    assert kept["roll"] == pytest.approx(kept["roll_src"], abs=0.01)
    assert kept["roll_src"] == pytest.approx(levelled["roll_src"], abs=2)
    with pytest.raises(ValueError, match="unknown options"):
        DetectAlign(BuildConfig(stages={"detect_align": StageConfig(options={"keep_rol": True})})).check()


def test_hopenet_backend_sees_the_loose_view_and_reports_both_frames(tmp_path):
    torch = pytest.importorskip("torch")
    from denseface.model.hopenet import Hopenet

    torch.manual_seed(0)
    weights = tmp_path / "hopenet.pkl"
    torch.save(Hopenet().state_dict(), weights)
    photo = rolled(decoded("obama2"), -25)[0]
    assert "loose_view" not in pose_fields(photo)  # PnP (the default) needs no loose view: none is cut
    cfg = BuildConfig(stages={"head_pose": StageConfig(backend="hopenet", weights=str(weights))})
    fields = pose_fields(photo, cfg)
    view = fields["loose_view"]
    assert view.shape == (224, 224, 3)
    stage = HeadPose(cfg)
    stage.check()
    item = Item(key="k", identity="i", source="casia", source_path="", unit=0,
                image=np.zeros((512, 512, 3), np.uint8), arrays={"lmk": fields["lmk"]},
                fields={"crop_transform": fields["crop_transform"]}, scratch={"loose_view": view})
    stage.process([item])
    assert item.ok, item.reason and item.fields["pose_backend"] == "hopenet"
    src = stage._hopenet(view)  # the loaded weights, on the loose view: the source-frame angles
    assert np.allclose(angles(item.fields, "_src"), src, atol=1e-3)
    assert np.allclose(angles(item.fields), crop_frame_pose(*src, fields["crop_transform"]), atol=1e-3)
    assert np.allclose(angles(item.fields, "_pnp"), angles(fields, "_pnp"), atol=1e-3)


def test_loose_view_is_the_unrotated_widened_box():
    image = np.zeros((400, 600, 3), np.uint8)
    image[100:200, 250:350] = 255  # the "face box"
    view = loose_view(image, (250.0, 100.0, 350.0, 200.0), size=224)
    # box 100x100 -> region x 200..400, y 25..225 (200x200), scaled to 224: the box spans
    # x 56..168 and y 84..196
    assert view.shape == (224, 224, 3)
    assert view[140, 112].min() == 255 and view[60, 112].max() == 0 and view[140, 30].max() == 0
    cols = np.where(view[140, :, 0] > 127)[0]
    rows = np.where(view[:, 112, 0] > 127)[0]
    assert abs(cols[0] - 56) <= 1 and abs(cols[-1] - 167) <= 1 and abs(rows[0] - 84) <= 1 and abs(rows[-1] - 195) <= 1
