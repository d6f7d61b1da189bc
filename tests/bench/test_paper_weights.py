"""The paper preset's stage set runs end to end on random weights (tests/bench/paper_weights.py): tiny
ones here, through the build's own loaders, and the published-size tokenizers match their configs,
so the GPU bench's full-size files are known to load and decode before a GPU is lent."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import transformers as tf

from denseface.config import load_config
from denseface.etl.build import build_dataset
from denseface.model.captioners import _TRANSFORMERS_CLASSES, KIND_ALIASES
from denseface.shards.manifest import read_manifest
from denseface.shards.reader import iter_samples
from tests.bench.annotation_models import CAPTIONERS, CLIP, PUBLISHED, published_values
from tests.bench.paper_weights import (
    image_side,
    paper_captioners,
    paper_config_file,
    text_values,
    write_paper_weights,
    write_processor,
)

# Two of the sample's photos, not all ten it accepts: the published-size CodeFormer (the only one its
# stage builds) takes 3-14 s an image on this CPU, and two already make a batch of every stage.
PHOTOS = ("obama/obama.jpg", "biden/biden.jpg")
BACKENDS = {"restore": "codeformer", "head_pose": "hopenet", "identity": "arcface", "latent": "vae",
            "captions": "models"}


@pytest.fixture(scope="module")
def paper_build(tmp_path_factory, sample_casia) -> Path:
    root = tmp_path_factory.mktemp("paper")
    for photo in PHOTOS:
        (root / "casia" / photo).parent.mkdir(parents=True)
        shutil.copy(sample_casia / photo, root / "casia" / photo)
    stages = write_paper_weights(root / "weights", full_size=False)
    cfg = load_config(paper_config_file(stages, root / "paper.yaml"), sources=[f"casia:{root / 'casia'}"],
                      out=root / "ds", runner="local", workers=1)
    assert {n: s.backend for n, s in cfg.stages.items() if n in BACKENDS} == BACKENDS
    assert all(cfg.stages[n].num_gpus > 0 for n in BACKENDS)  # as the preset has them: CPU fallback, no CUDA here
    build_dataset(cfg, progress=False)
    return root / "ds"


def test_paper_stages_run_on_tiny_random_weights(paper_build):
    rows = read_manifest(paper_build)
    assert (rows.status == "ok").all() and len(rows) == len(PHOTOS), rows[["key", "reason"]].to_dict("records")
    names = {c["name"] for c in paper_captioners()}
    samples = list(iter_samples(paper_build))
    assert len(samples) == len(PHOTOS)
    for sample in samples:
        meta = sample["json"]
        assert {stage: meta["versions"][stage].split("@")[0] for stage in BACKENDS} == BACKENDS
        assert meta["restore_backend"] == "codeformer" and meta["pose_backend"] == "hopenet"
        assert all(np.isfinite(meta[a]) for a in ("yaw", "pitch", "roll"))
        assert meta["id_backend"] == "arcface" and meta["id_dim"] == 512 and sample["id.npy"].shape == (512,)
        assert np.linalg.norm(sample["id.npy"].astype(np.float32)) == pytest.approx(1.0, abs=1e-2)
        assert sample["latent.npy"].shape == (4, 64, 64) and meta["latent_vae"]
        every = json.loads(meta["captions_all"])
        assert {c["captioner"] for c in every} == names  # each captioner said something
        assert all(-1.0 <= c["clip_score"] <= 1.0 for c in every)
        assert 1 <= len(meta["captions"]) <= 3 and meta["caption_top"] == meta["captions"][0]["text"]
        assert meta["clip_score_top"] == max(c["clip_score"] for c in every)


def _loaded(name: str, folder: Path):
    """(processor, tokenizer) as the caption stage loads them (`Captioner`, `ClipScorer`)."""
    if name == CLIP:
        processor = tf.CLIPProcessor.from_pretrained(folder)
        return processor, processor.tokenizer
    kind = {c["name"]: KIND_ALIASES.get(c["kind"], c["kind"]) for c in paper_captioners()}[name]
    processor = getattr(tf, _TRANSFORMERS_CLASSES[kind][0]).from_pretrained(folder)
    return processor, getattr(processor, "tokenizer", None) or tf.AutoTokenizer.from_pretrained(folder)


def _special_ids(name: str, tok) -> dict[str, int | None]:
    """The tokenizer's ids of what ``name``'s published config names by id."""
    image = {"image_token_index": tok.convert_tokens_to_ids("<image>")}
    blip = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id, "sep_token_id": tok.sep_token_id,
            "eos_token_id": tok.sep_token_id}
    return {
        "blip-large": blip,
        "blip-base": blip,
        "blip2-opt-2.7b": {**image, "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
                           "eos_token_id": tok.convert_tokens_to_ids("Ċ")},  # BLIP-2 OPT ends captions with "\n"
        "blip2-flan-t5-xl": {**image, "pad_token_id": tok.pad_token_id, "decoder_start_token_id": tok.pad_token_id,
                             "eos_token_id": tok.eos_token_id, "bos_token_id": tok.eos_token_id},
        "git-large-coco": {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.cls_token_id,
                           "eos_token_id": tok.sep_token_id},
        "vit-gpt2": {"pad_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id,
                     "eos_token_id": tok.eos_token_id, "decoder_start_token_id": tok.eos_token_id},
        CLIP: {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id},
    }[name]


def _config_ids(values: dict, keys) -> dict[str, int]:
    """``keys`` of a PUBLISHED config: top-level ones (the image token, VisionEncoderDecoder's decoder
    start and pad), else the text model's."""
    return {k: values.get(k, text_values(values).get(k)) for k in keys}


@pytest.mark.parametrize("name", [*CAPTIONERS, CLIP])
def test_published_size_tokenizers_match_their_configs(name, tmp_path):
    processor, tok = _loaded(name, write_processor(name, True, tmp_path))
    values = published_values(name, True)
    assert len(tok) == text_values(values)["vocab_size"]
    ids = _special_ids(name, tok)
    assert ids == _config_ids(values, ids)
    assert None not in tok.convert_ids_to_tokens(list(range(len(tok))))  # any generated id decodes
    assert isinstance(tok.decode(list(range(len(tok)))), str)
    images = processor(images=[np.zeros((40, 60, 3), np.uint8)], return_tensors="pt")["pixel_values"]
    assert images.shape[1:] == (3, image_side(values), image_side(values)) and image_side(values) in (224, 384)
    if PUBLISHED[name][0] == "Blip2ForConditionalGeneration":  # prompts start with the query tokens' places
        ids = processor(images=[np.zeros((8, 8, 3), np.uint8)], text="a", return_tensors="pt")["input_ids"][0]
        assert ids[:values["num_query_tokens"]].tolist() == [values["image_token_index"]] * values["num_query_tokens"]
