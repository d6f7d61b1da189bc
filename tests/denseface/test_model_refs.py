"""Model references (local path or hub id), the paper preset and `denseface weights check`: no network,
hub ids only through a Hugging Face cache folder written by the test (HF_HUB_OFFLINE=1)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from denseface.cli import main
from denseface.config import load_config
from denseface.model.tiny_sd import load_sd, save_tiny_sd
from denseface.model_refs import (
    ChecksumMismatch,
    MissingModel,
    require,
    resolve_file,
    resolve_pretrained,
    split_hub_ref,
)

FAKE_ID = "dense-face-tests/no-such-model"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache, offline; off-hub weights in an empty folder."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DENSEFACE_WEIGHTS", str(tmp_path / "weights"))
    return cache


def cache_snapshot(cache: Path, repo: str, revision: str = "main") -> Path:
    """The folder the hub's cache layout keeps ``repo`` at ``revision`` in (what `hf download` writes)."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(COMMIT)
    snap = root / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    return snap


def test_hub_ids_and_paths_are_told_apart(tmp_path):
    assert split_hub_ref("stabilityai/stable-diffusion-2-1-base") == ("stabilityai/stable-diffusion-2-1-base", None)
    assert split_hub_ref("Salesforce/blip2-opt-2.7b@v1.0") == ("Salesforce/blip2-opt-2.7b", "v1.0")
    for not_an_id in ("/models/sd21", "./sd/x", "~/sd/x", "a/b/c", "sd21"):
        assert split_hub_ref(not_an_id) is None
    (tmp_path / "owner" / "name").mkdir(parents=True)
    r = resolve_pretrained(tmp_path / "owner" / "name", "x")
    assert r.kind == "path" and r.status == "found"
    assert r.pretrained_args() == (str(tmp_path / "owner" / "name"), {"local_files_only": True})


def test_offline_hub_id_not_cached_is_one_line_naming_it(hub):
    r = resolve_pretrained(f"{FAKE_ID}@abc123", "Stable Diffusion")
    assert r.kind == "hub" and r.status == "missing" and r.revision == "abc123"
    with pytest.raises(MissingModel) as err:
        require([r])
    msg = str(err.value)
    assert "\n" not in msg and FAKE_ID in msg and f"hf download {FAKE_ID} --revision abc123" in msg
    assert str(hub) in msg and "HF_HUB_OFFLINE" in msg


def test_online_hub_id_goes_to_from_pretrained_with_its_revision(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    r = resolve_pretrained(f"{FAKE_ID}@v2", "captioner")
    assert r.status == "download" and r.ok  # the library downloads it into the cache on first use
    assert r.pretrained_args() == (FAKE_ID, {"cache_dir": str(hub), "revision": "v2"})  # no local_files_only


def test_online_unreachable_hub_fails_before_work(hub, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def no_network(self, repo_id, **kw):
        raise ConnectionError(f"cannot reach huggingface.co for {repo_id}")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", no_network)
    with pytest.raises(MissingModel, match="cannot reach huggingface.co") as err:
        require([resolve_pretrained(FAKE_ID, "captioner")])
    assert f"hf download {FAKE_ID}" in str(err.value)


def test_sd_from_a_hub_id_in_the_cache_loads_offline(hub, tmp_path):
    save_tiny_sd(cache_snapshot(hub, "dense-face-tests/tiny-sd"))
    r = resolve_pretrained("dense-face-tests/tiny-sd", "Stable Diffusion")
    assert r.status == "found" and r.pretrained_args() == (
        "dense-face-tests/tiny-sd", {"cache_dir": str(hub), "local_files_only": True})
    sd = load_sd("dense-face-tests/tiny-sd")
    local = load_sd(cache_snapshot(hub, "dense-face-tests/tiny-sd"))
    assert sd.unet.config.block_out_channels == local.unet.config.block_out_channels
    assert all((a == b).all() for a, b in zip(sd.unet.state_dict().values(), local.unet.state_dict().values()))
    with pytest.raises(MissingModel, match=f"hf download {FAKE_ID}"):
        load_sd(FAKE_ID)


def test_weights_file_checksum(tmp_path, monkeypatch):
    f = tmp_path / "codeformer.pth"
    f.write_bytes(b"not the published bytes")
    good = hashlib.sha256(f.read_bytes()).hexdigest()
    assert resolve_file(f, "w", "how", "s", sha256=good).status == "found"
    bad = resolve_file(f, "restore: CodeFormer weights", "Get it from CodeFormer v0.1.0.", "s", sha256="ab" * 32)
    with pytest.raises(ChecksumMismatch) as err:
        require([bad])
    assert "ab" * 32 in str(err.value) and good in str(err.value) and "CodeFormer v0.1.0" in str(err.value)
    monkeypatch.setenv("DENSEFACE_WEIGHTS", str(tmp_path))
    assert resolve_file("$DENSEFACE_WEIGHTS/codeformer.pth", "w", "how", "s").location == str(f)
    unset = resolve_file(None, "w", "how", "stages.restore.weights")
    assert unset.status == "missing" and "stages.restore.weights is unset" in unset.error()


def test_paper_preset():
    cfg = load_config("paper")
    assert cfg.pretrained == "stabilityai/stable-diffusion-2-1-base"
    st = cfg.stages
    assert (st["restore"].backend, st["restore"].options["fidelity"]) == ("codeformer", 0.5)
    assert st["head_pose"].backend == "hopenet" and st["identity"].backend == "arcface"
    caps = st["captions"]
    assert caps.backend == "models" and caps.options["keep"] == 3 and caps.num_gpus > 0
    kinds = {c["kind"] for c in caps.options["captioners"]}
    assert kinds == {"blip", "blip2", "git", "vision-encoder-decoder"} and "clip" in caps.options["clip"]
    assert all(st[s].num_gpus > 0 for s in ("restore", "head_pose", "identity", "latent"))
    assert st["latent"].backend == "vae" and st["latent"].weights == cfg.pretrained  # the trainer's own VAE
    assert load_config("default").stages["restore"].backend == "none"
    with pytest.raises(FileNotFoundError, match="default, paper"):
        load_config("no-such-preset")


def test_weights_check_default_is_complete(hub, capsys):
    assert main(["weights", "check"]) == 0
    out = capsys.readouterr().out
    assert out.count("status: found") == 4 and "dlib_face_recognition_resnet_model_v1.dat" in out
    assert "mmod_human_face_detector.dat" in out  # the detection cascade's dlib step
    assert "0 missing" in out


def test_weights_check_paper_lists_everything_and_fails(hub, tmp_path, capsys):
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "hopenet_robust_alpha1.pkl").write_bytes(b"x" * 2048)
    save_tiny_sd(cache_snapshot(hub, "stabilityai/stable-diffusion-2-1-base"))
    assert main(["weights", "check", "--config", "paper"]) == 1
    out = capsys.readouterr().out
    # 2 detector files, 3 stage files, the latent stage's VAE, 6 captioners, CLIP, SD
    assert len([b for b in out.split("\n") if b.startswith("    status:")]) == 14
    vae = out[out.index("latent: VAE\n"):].split("\n")[:4]
    assert "status: found" in vae[3] and str(hub) in vae[2]
    hopenet = out[out.index("head_pose: Hopenet"):].split("\n")[:6]
    assert "status: found" in hopenet[3] and "2.0 KB" in hopenet[4]
    assert hashlib.sha256(b"x" * 2048).hexdigest() in hopenet[5]
    sd = out[out.index("Stable Diffusion\n"):].split("\n")[:4]
    assert "status: found" in sd[3] and str(hub) in sd[2]
    assert "9 missing" in out and "error: restore: CodeFormer weights" in out
    assert "hf download Salesforce/blip2-opt-2.7b" in out


def test_build_with_missing_weights_stops_before_work(hub, tmp_path, sample_casia, capsys):
    out = tmp_path / "out"
    rc = main(["build-dataset", "--config", "paper", "--source", f"casia:{sample_casia}", "--out", str(out),
               "--runner", "local", "--no-progress"])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    # CodeFormer, Hopenet, ArcFace, 6 captioners, CLIP; the latent stage's VAE (SD itself is not the build's)
    assert rc == 2 and len(lines) == 10 + 1 and all(line.startswith("error: ") for line in lines)
    assert "codeformer.pth" in err and "hf download openai/clip-vit-large-patch14" in err
    assert not out.exists()  # nothing read or written


def test_train_with_a_missing_hub_model_stops_before_work(hub, tmp_path, capsys):
    rc = main(["train", "--pretrained", FAKE_ID, "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"),
               "--synthetic"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: Stable Diffusion: hub id " + FAKE_ID) and err.count("\n") == 1
    assert not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


def test_latent_stage_takes_the_sd_hub_id(hub):
    from denseface.annotators.base import Item
    from denseface.annotators.latent import Latent
    from denseface.config import BuildConfig, StageConfig
    from denseface.model.tiny_sd import build_tiny_sd, vae_fingerprint

    def stage(ref: str) -> Latent:
        return Latent(BuildConfig(stages={"latent": StageConfig(backend="vae", weights=ref)}))

    with pytest.raises(FileNotFoundError, match=f"hf download {FAKE_ID}"):
        stage(FAKE_ID).check()
    save_tiny_sd(cache_snapshot(hub, "stabilityai/stable-diffusion-2-1-base"), seed=0)
    latent = stage("stabilityai/stable-diffusion-2-1-base")
    latent.check()
    item = Item(key="k", identity="p", source="t", source_path="-", unit=0, image=np.zeros((64, 64, 3), np.uint8))
    (item,) = latent.process([item])
    assert item.ok and item.arrays["latent"].shape == (4, 8, 8)
    assert item.fields["latent_vae"] == vae_fingerprint(build_tiny_sd(0).vae)
