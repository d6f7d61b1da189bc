"""`denseface evaluate`: every metric path on tiny random models of the real architectures,
saved in the published files' layouts and loaded through the real code, on the sample photos;
and one end-to-end run of the command on the tiny offline Dense-Face."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from denseface.cli import main
from denseface.etl.sample_data import sample_photo
from denseface.evaluate import metrics as M
from denseface.evaluate.image_set import EvalImage, EvalInputError, read_images, write_image
from denseface.evaluate.runner import Scorers, score
from denseface.evaluate.scorers import (
    ClipEncoder,
    DinoEncoder,
    FaceFinder,
    FidScorer,
    IdentityScorer,
    LpipsScorer,
    ModelRefs,
    hf_load,
    parse_metrics,
)
from denseface.generation.face_region import load_photo
from denseface.model import adaface, inception, lpips
from tests.annotators.test_captions import IMG, save_clip
from tests.annotators.test_identity import tiny_arcface

# ---------------------------------------------------------------------------------- tiny models


def save_dino(root: Path) -> str:
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.ViTConfig(image_size=IMG, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64)
    out = root / "dino"
    tf.ViTModel(cfg).save_pretrained(out)
    tf.ViTImageProcessor(size={"height": IMG, "width": IMG}).save_pretrained(out)
    return str(out)


def save_lpips(root: Path) -> str:
    """Random LPIPS-alex in the published layout: torchvision trunk file + lpips lin file."""
    torch.manual_seed(1)
    net = lpips.LPIPS()
    state = net.state_dict()
    out = root / "lpips"
    out.mkdir()
    trunk = {"features." + k.split(".", 2)[2]: v for k, v in state.items() if k.startswith("net.")}
    trunk.update({"classifier.1.weight": torch.zeros(4096, 9216)[:1]})  # torchvision's head: ignored
    torch.save(trunk, out / lpips.TRUNK_FILE)
    with torch.no_grad():
        lin = {k: v.abs() for k, v in state.items() if k.startswith("lin")}  # published lin weights are >= 0
    torch.save(lin, out / lpips.LIN_FILE)
    return str(out)


def save_inception(root: Path) -> str:
    torch.manual_seed(2)
    net = inception.FIDInception()
    state = net.state_dict()
    state["fc.weight"], state["fc.bias"] = torch.randn(1008, 2048), torch.zeros(1008)  # as the published file
    path = root / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    return str(path)


def save_adaface(root: Path, layers: int = 18) -> str:
    """A Lightning-style checkpoint as AdaFace publishes: ``state_dict`` with ``model.`` + ``head.``."""
    torch.manual_seed(3)
    net = adaface.AdaFaceBackbone(layers)
    state = {"model." + k: v for k, v in net.state_dict().items()}
    state["head.kernel"] = torch.randn(512, 10)
    path = root / f"adaface_ir{layers}.ckpt"
    torch.save({"state_dict": state, "epoch": 1}, path)
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_metric_models")
    tiny_arcface(root / "w600k_r50.onnx")
    return {"clip": save_clip(root), "dino": save_dino(root), "lpips": save_lpips(root),
            "fid_inception": save_inception(root), "adaface": save_adaface(root),
            "arcface": str(root / "w600k_r50.onnx")}


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {s: load_photo(sample_photo(s)) for s in ("obama", "obama2", "biden", "tom_hanks")}


@pytest.fixture(scope="module")
def faces(photos):
    finder = FaceFinder()
    return {k: finder(v) for k, v in photos.items()}


# ---------------------------------------------------------------------------------- maths


def test_cosines_and_pairs():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 8))
    assert np.allclose(M.cosine_matrix(a, a).diagonal(), 1.0)
    assert np.allclose(M.paired_cosine(a, 3.0 * a), 1.0)
    assert np.allclose(M.paired_cosine(a, -a), -1.0)
    assert np.allclose(M.mean_cosine_to_set(a[:1], a[:1]), 1.0)
    assert M.mean_cosine_to_set(a[:1], a[1:])[0] < 1.0
    assert np.isnan(M.mean_cosine_to_set(a[:2], a[:0])).all()
    seen = []
    mean = M.mean_pairwise([1.0, 2.0, 4.0], lambda x, y: seen.extend(zip(x, y)) or np.abs(np.subtract(x, y)))
    assert sorted(seen) == [(1.0, 2.0), (1.0, 4.0), (2.0, 4.0)] and mean == pytest.approx((1 + 3 + 2) / 3)
    assert np.isnan(M.mean_pairwise([1.0], lambda x, y: np.zeros(len(x))))
    real = {"a": a[:1], "b": a[1:2], "c": a[:0]}
    assert M.retrieval_hits(a[:2], ["a", "b"], real).tolist() == [1.0, 1.0]
    assert M.retrieval_hits(a[:2], ["b", "a"], real).tolist() == [0.0, 0.0]
    assert np.isnan(M.retrieval_hits(a[:2], ["a", "a"], {"a": a[:1]})).all()
    assert M.angle_error(np.array([350.0, -90, 10]), np.array([10.0, 90, 10])).tolist() == [20.0, 180.0, 0.0]


def test_parse_metrics():
    assert "id_dlib" not in parse_metrics(None) and "fid" in parse_metrics("paper")
    assert parse_metrics("pose,clip_t") == ("clip_t", "pose")
    assert "id_dlib" in parse_metrics("all")
    with pytest.raises(EvalInputError, match="unknown bogus"):
        parse_metrics("clip_t,bogus")


# ---------------------------------------------------------------------------------- models


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_rewritten_networks_have_the_published_parameter_counts():
    # torchvision inception_v3: 27 161 264 in all, less fc (2048 x 1000 + 1000) and AuxLogits
    # (128 x 768 + 256 BN, 768 x 128 x 25 + 1536 BN, 768 x 1000 + 1000): the FID trunk
    assert _count(inception.FIDInception()) == 27_161_264 - 2_049_000 - 3_326_696
    # torchvision alexnet: 61 100 840 in all, less the classifier's three linears; + 5 LPIPS lins
    net = lpips.LPIPS()
    assert _count(net.net) == 61_100_840 - (9216 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 1000 + 1000)
    assert _count(net) - _count(net.net) == sum(lpips.CHANNELS)
    # AdaFace / insightface IR-50 and IR-100: 43.6 M and 65.2 M parameters
    assert round(_count(adaface.AdaFaceBackbone(50)) / 1e6, 1) == 43.6
    assert round(_count(adaface.AdaFaceBackbone(100)) / 1e6, 1) == 65.2


def test_clip_t_is_clip_models_own_cosine(tiny, photos):
    import transformers as tf

    enc = ClipEncoder(tiny["clip"])
    imgs = [photos["obama"], photos["biden"]]
    texts = ["a photo of a man", "a smiling woman"]
    ours = M.paired_cosine(enc.images(imgs), enc.texts(texts))
    model, proc = tf.CLIPModel.from_pretrained(tiny["clip"]), tf.CLIPProcessor.from_pretrained(tiny["clip"])
    with torch.no_grad():
        out = model(**proc(text=texts, images=imgs, return_tensors="pt", padding=True))
        ref = (out.logits_per_image / model.logit_scale.exp()).diagonal().numpy()
    assert ours.shape == (2,) and np.all(np.abs(ours) <= 1.0)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("kind", ["clip", "dino"])
def test_image_similarity_is_one_for_identical_images_and_lower_for_others(tiny, photos, kind):
    enc = ClipEncoder(tiny["clip"]) if kind == "clip" else DinoEncoder(tiny["dino"])
    e = enc.images([photos["obama"], photos["biden"], photos["obama"]])
    assert e.ndim == 2 and e.shape[0] == 3 and np.isfinite(e).all()
    same = M.mean_cosine_to_set(e[:1], e[2:])[0]
    assert same == pytest.approx(1.0, abs=1e-5)
    assert M.mean_cosine_to_set(e[:1], e[1:2])[0] < same - 1e-4


@pytest.mark.parametrize("backend", ["dlib", "arcface", "adaface"])
def test_identity_embeddings(tiny, faces, backend):
    scorer = IdentityScorer(backend, tiny.get(backend))
    e = scorer([faces["obama"], faces["obama2"], faces["biden"], faces["obama"]])
    assert e.shape[0] == 4 and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    sim = M.cosine_matrix(e, e)
    assert sim[0, 3] == pytest.approx(1.0, abs=1e-5)  # the same face: perfect
    assert sim[0, 2] < 1.0 - 1e-4
    if backend == "dlib":  # the only real model here: same person closer than another person
        assert sim[0, 1] > sim[0, 2]


def test_adaface_checkpoint_loads_with_its_names_and_depth(tmp_path):
    path = save_adaface(tmp_path, 18)
    net = adaface.load_adaface(path)
    assert sum(isinstance(m, adaface.BasicBlockIR) for m in net.body) == sum(adaface.UNITS[18])
    x = adaface.adaface_input([np.full((112, 112, 3), (10, 120, 250), np.uint8)])
    assert x[0, 0, 0, 0] == pytest.approx(250 / 127.5 - 1)  # BGR: blue first
    state = torch.load(path, weights_only=True)["state_dict"]
    state.pop("model.body.0.res_layer.1.weight")
    torch.save({"state_dict": state}, tmp_path / "broken.ckpt")
    with pytest.raises(ValueError, match="missing .*body.0.res_layer.1.weight"):
        adaface.load_adaface(tmp_path / "broken.ckpt")


def test_lpips_distance_and_published_layout(tiny, faces):
    scorer = LpipsScorer(tiny["lpips"])
    a, b = faces["obama"].crop, faces["biden"].crop
    d = scorer([a, a, b], [a, b, a])
    assert d.shape == (3,) and d[0] == pytest.approx(0.0, abs=1e-6)
    assert d[1] > 0 and d[1] == pytest.approx(d[2], rel=1e-5)  # symmetric
    assert M.mean_pairwise([a, a], scorer) == pytest.approx(0.0, abs=1e-6)
    assert M.mean_pairwise([a, b, faces["tom_hanks"].crop], scorer) > 0
    assert lpips.trunk_key("features.10.weight") == "net.slice5.10.weight"
    with pytest.raises(EvalInputError, match="alexnet-owt-7be5be79.pth"):
        LpipsScorer(str(Path(tiny["lpips"]).parent))


def test_fid_identical_sets_score_zero_and_other_sets_worse(tiny, photos, tmp_path):
    ref = tmp_path / "ffhq"
    ref.mkdir()
    for name in ("biden", "tom_hanks"):
        shutil.copy(sample_photo(name), ref / Path(sample_photo(name)).name)
    net = inception.load_fid_inception(tiny["fid_inception"])
    with torch.no_grad():
        feats = net(torch.from_numpy(photos["biden"].copy()).permute(2, 0, 1)[None])
    assert feats.shape == (1, inception.FEATURES) and torch.isfinite(feats).all()
    fid = FidScorer(tiny["fid_inception"], str(ref))
    same = fid([photos["biden"], photos["tom_hanks"]])
    other = fid([photos["obama"], photos["obama2"]])
    assert abs(same) < 1e-3 * max(other, 1e-12) and other > 0
    assert np.isnan(fid([photos["obama"]]))
    with pytest.raises(EvalInputError, match="--fid-reference"):
        FidScorer(tiny["fid_inception"], str(tmp_path / "nowhere"))


def test_missing_models_are_one_line_errors(tmp_path):
    with pytest.raises(EvalInputError, match="needs --arcface"):
        Scorers.load(("id_arcface",), ModelRefs())
    with pytest.raises(EvalInputError, match=r"CLIP model '.*no-clip' \(--clip\) cannot be loaded"):
        ClipEncoder(str(tmp_path / "no-clip"))
    with pytest.raises(EvalInputError, match="pt_inception"):
        Scorers.load(("fid",), ModelRefs(fid_inception=str(tmp_path / "x.pth"), fid_reference=str(tmp_path)))
    import transformers as tf

    with pytest.raises(EvalInputError) as err:
        hf_load(tf.AutoModel, str(tmp_path / "missing"), "DINO", "--dino")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------------- scoring


def _records(tmp_path: Path, photos, assignment: dict[str, list[str]], poses: dict[str, tuple] | None = None):
    """EvalImages for the given photos under the given subjects (as if generated)."""
    out = []
    for subject, names in assignment.items():
        (tmp_path / subject).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            path = tmp_path / subject / f"text-p0-s{i}.png"
            from PIL import Image

            Image.fromarray(photos[name]).save(path)
            pose = dict(zip(("yaw", "pitch", "roll"), poses[name])) if poses else None
            rec = EvalImage(subject, str(path), "text", "a photo of a man", i, None, None, pose)
            write_image(rec)
            out.append(rec)
    return out


def test_score_perfect_for_the_real_photos_and_worse_shuffled(tiny, photos, faces, tmp_path):
    subjects = {"obama": [Path(sample_photo("obama"))], "biden": [Path(sample_photo("biden"))]}
    metrics = ("clip_t", "clip_i", "dino", "id_arcface", "id_adaface", "id_dlib", "face_div", "pose")
    from denseface.model.hopenet import Hopenet

    torch.manual_seed(4)
    torch.save(Hopenet().state_dict(), tmp_path / "hopenet.pkl")
    refs = ModelRefs(**{k: v for k, v in tiny.items() if k != "fid_inception"}, hopenet=str(tmp_path / "hopenet.pkl"))
    scorers = Scorers.load(metrics, refs)
    poses = {k: f.pose for k, f in faces.items()}
    same = _records(tmp_path / "same", photos, {"obama": ["obama", "obama"], "biden": ["biden"]}, poses)
    assert read_images(tmp_path / "same") == sorted(same, key=lambda r: (r.subject, r.path))
    per, summary = score(same, subjects, scorers)
    for col in ("clip_i", "dino", "id_arcface", "id_adaface", "id_dlib"):
        np.testing.assert_allclose(per[col], 1.0, atol=1e-5)
    np.testing.assert_allclose(per["pose_mae"], 0.0, atol=1e-6)
    assert per["pose_mae_hopenet"].between(0, 180).all()  # random Hopenet: only its range
    for col in ("retrieval_arcface", "retrieval_adaface", "retrieval_dlib"):
        assert (per[col] == 1.0).all(), col
    assert per["clip_t"].between(-1, 1).all()
    obama = summary[(summary.subject == "obama") & (summary["mode"] == "text")].iloc[0]
    assert obama["face_div"] == pytest.approx(0.0, abs=1e-6) and obama["face_rate"] == 1.0
    assert set(summary.subject) == {"obama", "biden", "ALL"}

    shuffled_poses = {"obama": poses["biden"], "biden": poses["obama"], "obama2": poses["obama"]}
    swapped = _records(tmp_path / "swapped", photos, {"obama": ["biden", "obama2"], "biden": ["obama"]},
                       shuffled_poses)
    per2, summary2 = score(swapped, subjects, scorers)
    for col in ("clip_i", "dino", "id_arcface", "id_adaface", "id_dlib"):
        assert (per2[col] < 1.0 - 1e-4).all(), col
    assert (per2["pose_mae"] > 0.5).all()
    assert (per2["retrieval_dlib"] == 0.0).sum() >= 2  # biden's and obama's photos filed under each other
    obama2 = summary2[(summary2.subject == "obama") & (summary2["mode"] == "text")].iloc[0]
    assert obama2["face_div"] > 0


# ---------------------------------------------------------------------------------- the command


def test_evaluate_end_to_end_on_the_tiny_model(tiny, tmp_path, capsys):
    subjects = tmp_path / "subjects"
    for subject, names in {"obama": ["obama", "obama2"], "biden": ["biden"]}.items():
        (subjects / subject).mkdir(parents=True)
        for n in names:
            shutil.copy(sample_photo(n), subjects / subject)
    targets = tmp_path / "targets"
    targets.mkdir()
    shutil.copy(sample_photo("tom_hanks"), targets)
    ffhq = tmp_path / "ffhq"
    shutil.copytree(subjects / "obama", ffhq)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# the paper's list goes here\n\na photo of * smiling\n")
    out = tmp_path / "eval"
    args = ["evaluate", "--subjects", str(subjects), "--prompts", str(prompts), "--targets", str(targets),
            "--out", str(out), "--n", "2", "--steps", "2", "--device", "cpu", "--metrics", "all",
            "--fid-reference", str(ffhq)] + [f"--{k.replace('_', '-')}={v}" for k, v in tiny.items()]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "report:" in printed
    per = pd.read_csv(out / "per_image.csv")
    assert len(per) == 2 * (1 + 1) * 2  # subjects x (prompts + targets) x n
    assert sorted(per["mode"].unique()) == ["swap", "text"]
    assert sorted(per["seed"].unique()) == [0, 1]
    summary = pd.read_csv(out / "summary.csv")
    overall = summary[summary.subject == "ALL"].set_index("mode")
    assert set(overall.index) == {"text", "swap"}
    for col in ("clip_t", "clip_i", "dino"):
        assert overall[col].between(-1, 1).all()
    assert np.isfinite(overall["fid"]).all()
    # the tiny model paints noise, where no face is found: the face metrics are there, as n/a
    assert overall["face_rate"].between(0, 1).all()
    for col in ("id_arcface", "id_adaface", "id_dlib", "face_div", "pose_mae", "pose_err_yaw"):
        assert col in summary.columns
    info = json.loads((out / "metrics.json").read_text())
    assert info["generation_failures"] == [] and len(info["summary"]) == len(summary)
    side = json.loads(next((out / "images" / "obama").glob("swap-*.json")).read_text())
    assert side["mode"] == "swap" and side["target"].endswith("tom_hanks.png") and side["pose_condition"]
    text = json.loads(next((out / "images" / "obama").glob("text-*.json")).read_text())
    assert text["prompt"] == "a photo of * smiling" and text["clip_text"] == "a photo of face smiling"
    page = (out / "report.html").read_text()
    assert page.count('<img class="plot"') == len(per) and 'id="s-biden"' in page
    assert "<td>n/a</td>" in page  # the face metrics of noise images

    # the same images scored again from disk, as another method's images would be
    rc = main(["evaluate", "--subjects", str(subjects), "--images", str(out / "images"), "--out",
               str(tmp_path / "again"), "--metrics", "clip_i,id_dlib,pose", "--clip", tiny["clip"]])
    assert rc == 0
    again = pd.read_csv(tmp_path / "again" / "per_image.csv")
    pd.testing.assert_series_equal(again["id_dlib"], per["id_dlib"])
    pd.testing.assert_series_equal(again["clip_i"], per["clip_i"], atol=1e-6)


def test_cli_errors_are_one_line(tmp_path, capsys):
    subjects = tmp_path / "subjects" / "obama"
    subjects.mkdir(parents=True)
    shutil.copy(sample_photo("obama"), subjects)
    images = tmp_path / "images" / "obama"
    images.mkdir(parents=True)
    shutil.copy(sample_photo("obama"), images)
    (tmp_path / "other" / "nobody").mkdir(parents=True)
    shutil.copy(sample_photo("obama"), tmp_path / "other" / "nobody")
    base = ["evaluate", "--subjects", str(subjects.parent), "--out", str(tmp_path / "o")]
    scored = base + ["--images", str(images.parent)]
    cases = [(base + ["--prompts", str(tmp_path / "none.txt")], "none.txt: no such file"),
             (base, "--prompts is required"),
             (base + ["--images", str(tmp_path / "o")], "not a folder"),
             (base + ["--images", str(tmp_path)], "no images"),
             (base + ["--images", str(tmp_path / "other")], "without reference photos in --subjects: nobody"),
             (scored + ["--metrics", "fid"], "fid needs --fid-inception"),
             (scored + ["--metrics", "clip_t", "--clip", str(tmp_path / "c")], "CLIP model"),
             (scored + ["--metrics", "face_div", "--lpips", str(tmp_path)], "alex.pth")]
    for argv, msg in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and msg in err and err.count("\n") == 1, err
