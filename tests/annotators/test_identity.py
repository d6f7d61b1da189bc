"""Identity embeddings (annotators/identity.py): dlib on real photos, the ArcFace ONNX path
with a tiny model built here, the insightface 5-point alignment, and start-up checks."""
from __future__ import annotations

import copy
import itertools

import cv2
import numpy as np
import pytest

from denseface.annotators import identity as idm
from denseface.annotators.base import Item
from denseface.annotators.decode import Decode
from denseface.annotators.detect_align import DetectAlign
from denseface.annotators.identity import ARCFACE_DST, Identity
from denseface.annotators.landmarks import Landmarks
from denseface.config import BuildConfig, StageConfig
from denseface.etl.sample_data import sample_photo

PEOPLE = {"obama": "obama", "obama2": "obama", "obama3": "obama", "biden": "biden", "astronaut": "eileen_collins"}


@pytest.fixture(scope="module")
def faces() -> dict[str, Item]:
    """Items as the identity stage receives them: the real upstream stages on real photos."""
    cfg = BuildConfig()
    items = [Item(key=stem, identity=who, source="casia", source_path=str(sample_photo(stem)), unit=0)
             for stem, who in PEOPLE.items()]
    for stage in (Decode(cfg), DetectAlign(cfg), Landmarks(cfg)):
        stage.process(items)
    assert all(it.ok for it in items), [(it.key, it.reason) for it in items]
    return {it.key: it for it in items}


def fresh(faces: dict[str, Item], *keys: str) -> list[Item]:
    return [copy.deepcopy(faces[k]) for k in keys]


def identity_stage(backend: str = "default", weights: str | None = None, **options) -> Identity:
    conf = StageConfig(backend=backend, weights=weights, options=options)
    return Identity(BuildConfig(stages={"identity": conf}))


# ---- dlib on real photos -------------------------------------------------------------------

def test_dlib_same_person_is_closer_than_different_people(faces):
    stage = identity_stage()
    stage.check()
    items = stage.process(fresh(faces, *PEOPLE))
    for it in items:
        assert it.ok, it.reason
        emb = it.arrays["id"]
        assert emb.dtype == np.float32 and emb.shape == (128,)
        assert abs(float(np.linalg.norm(emb)) - 1.0) < 1e-5
        assert it.fields == {**faces[it.key].fields, "id_backend": "dlib", "id_dim": 128}
        assert it.versions["identity"] == "dlib@2"
    emb = {it.key: it.arrays["id"] for it in items}
    dist = {(a, b): float(np.linalg.norm(emb[a] - emb[b])) for a, b in itertools.combinations(PEOPLE, 2)}
    same = {k: d for k, d in dist.items() if PEOPLE[k[0]] == PEOPLE[k[1]]}
    other = {k: d for k, d in dist.items() if PEOPLE[k[0]] != PEOPLE[k[1]]}
    print("same person:", same, "\ndifferent people:", other)
    assert max(same.values()) < min(other.values()), (same, other)
    # dlib's own rule of thumb: same person under 0.6 (its descriptors are close to unit norm)
    assert max(same.values()) < 0.45 and min(other.values()) > 0.45


def test_missing_landmarks_is_an_error_not_a_crash(faces):
    good, bad = fresh(faces, "obama", "biden")
    del bad.arrays["lmk"]
    identity_stage().process([good, bad])
    assert good.ok and good.arrays["id"].shape == (128,)
    assert bad.status == "error" and "landmarks" in bad.reason


# ---- the 5-point ArcFace alignment -----------------------------------------------------------

def test_umeyama_recovers_an_exact_similarity():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 500, (5, 2))
    angle, scale, shift = 0.3, 0.27, np.array([12.0, -7.0])
    truth = np.hstack([scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]),
                       shift[:, None]])
    dst = idm.transform_points(truth, src)
    np.testing.assert_allclose(idm.umeyama_similarity(src, dst), truth, atol=1e-9)
    lmeds, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    np.testing.assert_allclose(lmeds, truth, atol=1e-4)
    # a mirrored point set is not a similarity: no reflection is fitted
    m = idm.umeyama_similarity(src, src * [-1, 1])
    assert np.linalg.det(m[:, :2]) > 0


@pytest.mark.parametrize("key", ["obama2", "biden", "obama3"])
def test_arcface_alignment_puts_the_five_points_on_the_template(faces, key):
    item = faces[key]
    lmk, h, w = item.arrays["lmk"], *item.image.shape[:2]
    src = idm.five_points(lmk, w, h)
    # mediapipe indices: iris centres, nose tip, mouth corners, image left before image right
    assert src[0, 0] < src[1, 0] and src[3, 0] < src[4, 0] and src[0, 1] < src[2, 1] < src[3, 1]
    # a warp of pixel coordinates: each pixel of the crop holds where it was sampled from
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    coords = np.dstack([xs, ys, np.zeros_like(xs)])
    crop, matrix = idm.align_arcface(coords, lmk)
    assert crop.shape == (112, 112, 3)
    landed = idm.transform_points(matrix, src)
    err = np.linalg.norm(landed - ARCFACE_DST, axis=1)
    print(key, "5-point residuals (px at 112):", np.round(err, 2))
    # a least-squares similarity of a real face: eyes within ~3 px; the nose tip, which
    # sits a little lower on mediapipe's mesh than on the template, within ~5 px
    assert err.mean() < 3.0 and err.max() < 5.0, err
    for (u, v), p in zip(landed, src):  # the crop really was sampled through `matrix`
        sampled = cv2.getRectSubPix(crop, (1, 1), (float(u), float(v)))[0, 0, :2]
        np.testing.assert_allclose(sampled, p, atol=0.05)


def test_five_points_eye_corners_option(faces):
    lmk = faces["biden"].arrays["lmk"]
    iris, corners = idm.five_points(lmk, 512, 512, "iris"), idm.five_points(lmk, 512, 512, "corners")
    np.testing.assert_array_equal(iris[2:], corners[2:])
    assert np.linalg.norm(iris[:2] - corners[:2], axis=1).max() < 15  # px in the 512 crop
    with pytest.raises(ValueError):
        idm.five_points(lmk, 512, 512, "pupils")


# ---- ArcFace ONNX with a tiny model ---------------------------------------------------------

EMB_DIM = 512


def tiny_arcface(path, batch: int | str = "N", seed: int = 0) -> np.ndarray:
    """input.1 [batch,3,112,112] -> global average pool -> flatten -> (3 x 512) matmul."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(seed).normal(size=(3, EMB_DIM)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input.1"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "W"], ["683"])],
        "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [batch, 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, [batch, EMB_DIM])],
        [numpy_helper.from_array(weight, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return weight


@pytest.mark.parametrize("batch", ["N", 1])
def test_arcface_backend_runs_the_onnx_model_batched(faces, tmp_path, batch):
    weight = tiny_arcface(tmp_path / "w600k_r50.onnx", batch)
    stage = identity_stage("arcface", str(tmp_path / "w600k_r50.onnx"))
    stage.check()
    items = fresh(faces, "obama", "obama2", "biden")
    rgb = (200, 100, 50)
    items[2].image = np.full_like(items[2].image, rgb)  # a constant-colour crop, real landmarks
    stage.process(items)
    assert all(it.ok for it in items), [it.reason for it in items]
    embs = np.stack([it.arrays["id"] for it in items])
    assert embs.shape == (3, EMB_DIM) and embs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embs, axis=1), 1.0, atol=1e-5)
    assert {(it.fields["id_backend"], it.fields["id_dim"]) for it in items} == {("arcface", EMB_DIM)}
    # (rgb - 127.5) / 127.5 in RGB order, averaged by the pool, through the known weights
    crop, _ = idm.align_arcface(items[2].image, items[2].arrays["lmk"])
    assert (crop == rgb).all()  # no black border in the 112 crop
    want = ((np.array(rgb) - 127.5) / 127.5) @ weight
    np.testing.assert_allclose(embs[2], want / np.linalg.norm(want), atol=1e-5)
    # a batch gives what one image at a time gives
    single = identity_stage("arcface", str(tmp_path / "w600k_r50.onnx"))
    for it in fresh(faces, "obama", "obama2"):
        single.process([it])
        np.testing.assert_allclose(it.arrays["id"], embs[["obama", "obama2"].index(it.key)], atol=1e-5)


def test_arcface_model_wrapper_reads_the_session(tmp_path):
    tiny_arcface(tmp_path / "m.onnx", 1)
    model = idm.ArcFaceOnnx(tmp_path / "m.onnx")
    assert (model.input_name, model.size, model.max_batch) == ("input.1", 112, 1)
    out = model([np.zeros((112, 112, 3), np.uint8)] * 3)  # three runs of one
    assert out.shape == (3, EMB_DIM)
    blob = idm.arcface_blob([np.full((2, 2, 3), (255, 0, 127), np.uint8)])
    assert blob.shape == (1, 3, 2, 2)
    np.testing.assert_allclose(blob[0, :, 0, 0], [1.0, -1.0, -0.5 / 127.5])


# ---- start-up checks --------------------------------------------------------------------------

def test_check_names_missing_dlib_weights(tmp_path):
    stage = identity_stage("dlib", str(tmp_path))
    with pytest.raises(FileNotFoundError) as err:
        stage.check()
    msg = str(err.value)
    assert str(tmp_path / idm.DLIB_RECOGNITION) in msg and str(tmp_path / idm.DLIB_SHAPE_5) in msg
    assert "face-recognition-models" in msg
    identity_stage("default").check()  # the package folder has both files


def test_check_names_missing_arcface_weights(tmp_path):
    missing = tmp_path / "w600k_r50.onnx"
    with pytest.raises(FileNotFoundError, match="w600k_r50.onnx") as err:
        identity_stage("arcface", str(missing)).check()
    assert str(missing) in str(err.value) and "stages.identity.weights" in str(err.value)
    with pytest.raises(FileNotFoundError, match="stages.identity.weights is unset"):
        identity_stage("arcface").check()


def test_check_rejects_unknown_backend_and_options():
    with pytest.raises(ValueError, match="unknown backend"):
        identity_stage("facenet")
    with pytest.raises(ValueError, match="unknown options"):
        identity_stage("dlib", num_jiters=1).check()
