"""DenseFacePipeline on the tiny model: save_pretrained / from_pretrained round trip (local folder and
a hub id in an offline Hugging Face cache written here), the diffusers calling convention."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from denseface.etl.sample_data import sample_photo
from denseface.generation.pipeline import DENSE_FACE_FOLDER, DenseFacePipeline
from denseface.model_refs import MissingModel
from tests.denseface.test_model_refs import cache_snapshot

PROMPT = "a photo of a smiling man"


@pytest.fixture(scope="module")
def trained_pipe() -> DenseFacePipeline:
    """The tiny pipeline with 'trained' Dense-Face modules: random non-zero weights, so that G2
    depends on every saved tensor (the untrained ones start at zero)."""
    pipe = DenseFacePipeline.load(None, seed=0, device="cpu")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in pipe.dense_face.trainable_modules().parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return pipe


def _run(pipe: DenseFacePipeline, seed: int = 3, **kw) -> np.ndarray:
    out = pipe(prompt=PROMPT, reference_image=sample_photo("obama"), num_inference_steps=4,
               generator=torch.Generator().manual_seed(seed), output_type="np", **kw)
    return out.images


def test_round_trip_gives_identical_images(trained_pipe, tmp_path):
    before = _run(trained_pipe)
    trained_pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "DenseFacePipeline"
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    assert (tmp_path / "pipe" / DENSE_FACE_FOLDER / "dense_face.safetensors").is_file()
    loaded = DenseFacePipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.dense_face.config == trained_pipe.dense_face.config
    after = _run(loaded)
    assert before.shape == (1, 64, 64, 3) and before.dtype == np.float32
    assert np.array_equal(before, after)
    assert not np.array_equal(before, _run(loaded, seed=4))  # the seed matters, so equality means something


def test_saved_folder_names_no_python_module(trained_pipe, tmp_path):
    """model_index.json names the class, not the module it lives in: folders saved when the class was
    `denseface.pipeline.DenseFacePipeline` load the same now that it is in `denseface.generation`."""
    trained_pipe.save_pretrained(tmp_path / "pipe")
    text = (tmp_path / "pipe" / "model_index.json").read_text()
    index = json.loads(text)
    assert index["_class_name"] == "DenseFacePipeline" and "denseface" not in text
    assert {lib for key, value in index.items() if not key.startswith("_") for lib in value[:1]} <= {
        "diffusers", "transformers"}
    assert DenseFacePipeline.from_pretrained(tmp_path / "pipe").dense_face.config == trained_pipe.dense_face.config


def test_hub_id_round_trip_through_an_offline_cache(trained_pipe, tmp_path, monkeypatch):
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    trained_pipe.save_pretrained(cache_snapshot(cache, "dense-face-tests/tiny-dense-face"))
    loaded = DenseFacePipeline.from_pretrained("dense-face-tests/tiny-dense-face")
    assert np.array_equal(_run(trained_pipe), _run(loaded))  # dense_face/ came from the cache too
    with pytest.raises(MissingModel, match="hf download dense-face-tests/missing"):
        DenseFacePipeline.from_pretrained("dense-face-tests/missing")


def test_plain_sd_folder_plus_trained_modules(trained_pipe, tmp_path):
    from denseface.model.tiny_sd import save_sd

    save_sd(trained_pipe.sd_components(), tmp_path / "sd")
    trained_pipe.dense_face.save_trained(tmp_path / "dense")
    pipe = DenseFacePipeline.from_pretrained(tmp_path / "sd", dense_face=tmp_path / "dense")
    assert np.array_equal(_run(trained_pipe), _run(pipe))


def test_call_convention(trained_pipe):
    out = trained_pipe(prompt=PROMPT, reference_image=Image.open(sample_photo("obama")), num_inference_steps=2)
    assert isinstance(out.images[0], Image.Image) and out.images[0].size == (64, 64)
    res = out.results[0]
    assert res.mode == "text" and np.array_equal(np.asarray(out.images[0]), res.final)
    images, results = trained_pipe(prompt=PROMPT, reference_image=sample_photo("obama"), num_inference_steps=2,
                                   return_dict=False)
    assert len(images) == 1 and results[0].final.shape == (64, 64, 3)
    with pytest.raises(ValueError, match="reference_image"):
        trained_pipe(prompt=PROMPT)


def test_cli_generates_from_a_saved_pipeline_folder(trained_pipe, tmp_path):
    from denseface.cli import main

    trained_pipe.save_pretrained(tmp_path / "pipe")
    out = tmp_path / "out.png"
    rc = main(["generate", "--pretrained", str(tmp_path / "pipe"), "--prompt", PROMPT, "--reference",
               str(sample_photo("obama")), "--steps", "4", "--seed", "3", "--device", "cpu", "--out", str(out)])
    assert rc == 0
    expected = np.rint(_run(trained_pipe)[0] * 255).astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(out)), expected)  # the CLI is the pipeline
    assert json.loads(out.with_suffix(".json").read_text())["id_backend"] == "dlib"
