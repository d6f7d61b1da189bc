"""Captions (annotators/captions.py): template captions on real photos, and the model backend
with tiny random BLIP / BLIP-2 / GIT / ViT-GPT2 captioners and a tiny CLIP scorer, built from
small configs and saved to tmp_path here (no download), then loaded by the stage's own code."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers as tf

from denseface.annotators import captions as cap
from denseface.annotators.base import Item
from denseface.config import BuildConfig, StageConfig
from tests.bench.annotation_models import favour_words
from tests.caption_tokenizers import CLIP_SPECIALS, GPT2_SPECIALS, WORDS, bert_tokenizer, bpe_tokenizer

IMG = 32  # tiny image size of every tiny model


def tiny_bert() -> tf.BertTokenizer:
    return bert_tokenizer(bos_token="[DEC]", model_max_length=40)


def gpt2_word_ids(tok) -> list[int]:
    return tok.convert_tokens_to_ids(["Ġ" + w for w in WORDS if len(w) > 1])


# ------------------------------------------------------------------ tiny models

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
              image_size=IMG, patch_size=8)


def save_blip(tmp_path, name: str, seed: int) -> str:
    tok = tiny_bert()
    ids = tok.convert_tokens_to_ids
    cfg = tf.BlipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, encoder_hidden_size=32,
                         pad_token_id=ids("[PAD]"), bos_token_id=ids("[DEC]"), sep_token_id=ids("[SEP]"),
                         eos_token_id=ids("[SEP]")),
        vision_config=VISION, projection_dim=32, image_text_hidden_size=32)
    torch.manual_seed(seed)
    model = tf.BlipForConditionalGeneration(cfg)
    favour_words(model, ids(WORDS))
    out = tmp_path / name
    model.save_pretrained(out)
    proc = tf.BlipProcessor(tf.BlipImageProcessor(size={"height": IMG, "width": IMG}), tok)
    proc.save_pretrained(out)
    return str(out)


def save_git(tmp_path, name: str, seed: int) -> str:
    tok = tiny_bert()
    ids = tok.convert_tokens_to_ids
    cfg = tf.GitConfig(vision_config=VISION, vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
                       pad_token_id=ids("[PAD]"), bos_token_id=ids("[CLS]"), eos_token_id=ids("[SEP]"))
    torch.manual_seed(seed)
    model = tf.GitForCausalLM(cfg)
    favour_words(model, ids(WORDS))
    out = tmp_path / name
    model.save_pretrained(out)
    image_proc = tf.CLIPImageProcessor(size={"shortest_edge": IMG}, crop_size={"height": IMG, "width": IMG})
    tf.GitProcessor(image_proc, tok).save_pretrained(out)
    return str(out)


def save_vit_gpt2(tmp_path, name: str, seed: int) -> str:
    tok = bpe_tokenizer(tf.GPT2Tokenizer, False, GPT2_SPECIALS)
    eos = tok.eos_token_id
    enc = tf.ViTConfig(**VISION)
    dec = tf.GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64,
                        bos_token_id=eos, eos_token_id=eos)
    cfg = tf.VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
    cfg.decoder_start_token_id = eos
    cfg.pad_token_id = eos
    cfg.eos_token_id = eos
    torch.manual_seed(seed)
    model = tf.VisionEncoderDecoderModel(config=cfg)
    favour_words(model, gpt2_word_ids(tok))
    model.generation_config.decoder_start_token_id = eos
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = eos
    out = tmp_path / name
    model.save_pretrained(out)
    tok.save_pretrained(out)
    tf.ViTImageProcessor(size={"height": IMG, "width": IMG}).save_pretrained(out)
    return str(out)


def save_blip2(tmp_path, name: str, seed: int) -> str:
    tok = bpe_tokenizer(tf.GPT2Tokenizer, False, GPT2_SPECIALS)
    n_query = 4
    proc = tf.Blip2Processor(tf.BlipImageProcessor(size={"height": IMG, "width": IMG}), tok, num_query_tokens=n_query)
    image_token = tok.convert_tokens_to_ids("<image>")
    eos = tok.eos_token_id
    text = tf.OPTConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2,
                        word_embed_proj_dim=32, max_position_embeddings=64, bos_token_id=eos, eos_token_id=eos,
                        pad_token_id=eos)
    cfg = tf.Blip2Config(vision_config=VISION,
                         qformer_config=dict(vocab_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=64, encoder_hidden_size=32, max_position_embeddings=32),
                         text_config=text.to_dict(), num_query_tokens=n_query, image_token_index=image_token)
    torch.manual_seed(seed)
    model = tf.Blip2ForConditionalGeneration(cfg)
    favour_words(model, gpt2_word_ids(tok))
    out = tmp_path / name
    model.save_pretrained(out)
    proc.save_pretrained(out)
    return str(out)


def save_clip(tmp_path, seed: int = 0) -> str:
    tok = bpe_tokenizer(tf.CLIPTokenizer, True, CLIP_SPECIALS, model_max_length=32)
    cfg = tf.CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=32, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=VISION, projection_dim=16)
    torch.manual_seed(seed)
    model = tf.CLIPModel(cfg)
    out = tmp_path / "clip"
    model.save_pretrained(out)
    image_proc = tf.CLIPImageProcessor(size={"shortest_edge": IMG}, crop_size={"height": IMG, "width": IMG})
    tf.CLIPProcessor(image_processor=image_proc, tokenizer=tok).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_captioners")
    return {"blip-a": save_blip(root, "blip_a", 1), "blip-b": save_blip(root, "blip_b", 2),
            "git": save_git(root, "git", 3), "vit-gpt2": save_vit_gpt2(root, "vit_gpt2", 4),
            "blip2": save_blip2(root, "blip2", 5), "clip": save_clip(root)}


def crops(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (512, 512, 3), dtype=np.uint8) for _ in range(n)]


def new_item(key: str, image: np.ndarray | None = None) -> Item:
    return Item(key=key, identity="x", source="casia", source_path=f"/{key}.jpg", unit=0, image=image)


def models_stage(paths: dict[str, str], captioners: list[dict], **opts) -> cap.Captions:
    conf = StageConfig(backend="models", batch_size=2,
                       options={"captioners": captioners, "clip": paths["clip"], "keep": 3, "max_new_tokens": 6,
                                **opts})
    return cap.Captions(BuildConfig(), conf)


# ------------------------------------------------------------------ pure functions


def test_select_top_orders_by_score_and_dedupes():
    cands = [{"captioner": "a", "text": "a man", "clip_score": 0.21},
             {"captioner": "b", "text": "a man in a suit", "clip_score": 0.30},
             {"captioner": "c", "text": "A  man", "clip_score": 0.25},  # same text as "a man": kept once
             {"captioner": "d", "text": "a smiling man", "clip_score": 0.28},
             {"captioner": "e", "text": "", "clip_score": 0.99},  # empty: never kept
             {"captioner": "f", "text": "a person", "clip_score": 0.05}]
    top = cap.select_top(cands, 3)
    assert [c["captioner"] for c in top] == ["b", "d", "c"]
    assert [c["clip_score"] for c in top] == [0.30, 0.28, 0.25]
    assert [c["captioner"] for c in cap.select_top(cands, 10)] == ["b", "d", "c", "f"]
    f = cap.caption_fields(cands, 3)
    assert f["caption_top"] == "a man in a suit" and f["clip_score_top"] == 0.30
    assert json.loads(f["captions_all"]) == cands
    empty = cap.caption_fields([], 3)
    assert empty["captions"] == [] and empty["caption_top"] is None and empty["clip_score_top"] is None


def test_pose_phrase_thresholds():
    assert cap.pose_phrase(0, 0, 0) == "facing forward"
    assert cap.pose_phrase(15, 0) == "facing slightly left"
    assert cap.pose_phrase(-45, 0) == "facing right"
    assert cap.pose_phrase(0, 30) == "facing up"
    assert cap.pose_phrase(0, -12) == "facing slightly down"
    assert cap.pose_phrase(75, 0) == "in profile, facing left"
    assert cap.pose_phrase(0, 0, 20) == "facing forward, head tilted to the right"
    assert cap.pose_phrase(None, None, None) is None
    assert cap.pose_phrase(None, 15) == "facing slightly up"


# ------------------------------------------------------------------ template backend on real photos


@pytest.fixture(scope="module")
def real_faces() -> dict[str, Item]:
    from denseface.annotators.decode import Decode
    from denseface.annotators.detect_align import DetectAlign
    from denseface.annotators.landmarks import Landmarks
    from denseface.etl.sample_data import sample_photo

    build = BuildConfig()
    stages = [Decode(build), DetectAlign(build), Landmarks(build)]
    items = [Item(key=n, identity="obama", source="casia", source_path=str(sample_photo(n)), unit=0)
             for n in ("obama", "obama2")]
    for stage in stages:
        stage.process(items)
    assert all(it.ok for it in items), [it.reason for it in items]
    return {it.key: it for it in items}


def test_template_mouth_on_real_photos(real_faces):
    smile, speech = real_faces["obama"], real_faces["obama2"]
    # obama: broad smile, lips parted over the teeth; obama2: mid-speech, mouth wide open
    m_smile, m_speech = cap.mouth_openness(smile.arrays["lmk"]), cap.mouth_openness(speech.arrays["lmk"])
    assert m_speech > m_smile > cap.MOUTH_PARTED
    assert cap.mouth_state(m_speech) == "mouth open"
    assert cap.mouth_state(m_smile) == "mouth slightly open"
    for it in (smile, speech):
        assert cap.eye_state(*cap.eye_openness(it.arrays["lmk"])) == "eyes open"

    stage = cap.Captions(BuildConfig())
    assert stage.backend == "template"
    stage.check()
    stage.process([smile, speech])
    assert smile.ok and speech.ok
    assert ", mouth open," in speech.fields["caption_top"]
    assert "mouth slightly open" in smile.fields["caption_top"]
    for it in (smile, speech):
        assert it.fields["caption_top"].startswith("a close-up photo of a person")
        assert it.fields["caption_top"].endswith("eyes open")
        assert it.fields["clip_score_top"] is None
        assert it.fields["captions"] == [
            {"captioner": "template", "text": it.fields["caption_top"], "clip_score": None}]
        assert json.loads(it.fields["captions_all"]) == it.fields["captions"]
        assert it.versions["captions"] == "template@1"


def test_template_yaw_sign(real_faces):
    lmk = real_faces["obama2"].arrays["lmk"]
    stage = cap.Captions(BuildConfig(), StageConfig(backend="template"))
    left, right, unknown = (new_item(k, np.zeros((512, 512, 3), np.uint8)) for k in ("l", "r", "u"))
    for it, yaw in ((left, 30.0), (right, -30.0)):
        it.arrays["lmk"] = lmk
        it.fields.update(yaw=yaw, pitch=0.0, roll=0.0)
    unknown.arrays["lmk"] = lmk  # no pose fields at all (head-pose stage absent)
    stage.process([left, right, unknown])
    assert " left" in left.fields["caption_top"] and " right" not in left.fields["caption_top"]
    assert " right" in right.fields["caption_top"] and " left" not in right.fields["caption_top"]
    assert unknown.ok and "facing" not in unknown.fields["caption_top"]
    assert unknown.fields["caption_top"].startswith("a close-up photo of a person, mouth open")
    assert all(it.fields["clip_score_top"] is None for it in (left, right, unknown))


# ------------------------------------------------------------------ model backend with tiny models


def test_captioner_spec_defaults_aliases_and_limits():
    """An entry's own generation settings win over the stage-wide ones, which win over the spec's defaults."""
    spec = cap.captioner_spec({"kind": "vit-gpt2", "path": "/m", "num_beams": 3}, {"num_beams": 2, "max_new_tokens": 9})
    assert (spec.name, spec.kind, spec.path) == ("vision-encoder-decoder", "vision-encoder-decoder", "/m")
    assert (spec.max_new_tokens, spec.num_beams, spec.num_return_sequences) == (9, 3, 1)
    assert cap.captioner_spec({"name": "b", "kind": "blip", "path": "/m"}, {}).max_new_tokens == 30
    with pytest.raises(ValueError, match="must not exceed num_beams"):
        cap.captioner_spec({"kind": "blip", "path": "/m", "num_return_sequences": 2}, {})
    with pytest.raises(ValueError, match="needs kind and path"):
        cap.captioner_spec({"kind": "blip"}, {})


def test_check_names_missing_paths(tmp_path, tiny_models):
    missing = tmp_path / "nowhere" / "blip-large"
    stage = models_stage(tiny_models, [{"name": "blip-large", "kind": "blip", "path": str(missing)},
                                       {"name": "git", "kind": "git", "path": tiny_models["git"]}],
                         clip=str(tmp_path / "no_clip"))
    with pytest.raises(FileNotFoundError) as exc:
        stage.check()
    msg = str(exc.value)
    assert str(missing) in msg and str(tmp_path / "no_clip") in msg
    assert tiny_models["git"] not in msg
    assert "save_pretrained" in msg and "Salesforce/blip-image-captioning-large" in msg
    with pytest.raises(ValueError, match="kind"):
        models_stage(tiny_models, [{"name": "x", "kind": "nope", "path": str(tmp_path)}])


def test_models_backend_captions_and_ranks(tiny_models):
    captioners = [{"name": "blip-a", "kind": "blip", "path": tiny_models["blip-a"]},
                  {"name": "blip-b", "kind": "blip", "path": tiny_models["blip-b"]},
                  {"name": "git", "kind": "git", "path": tiny_models["git"]},
                  {"name": "vit-gpt2", "kind": "vision-encoder-decoder", "path": tiny_models["vit-gpt2"]},
                  {"name": "blip2", "kind": "blip2", "path": tiny_models["blip2"]}]
    stage = models_stage(tiny_models, captioners)
    stage.check()
    items = [new_item(f"k{i}", im) for i, im in enumerate(crops(3))]
    stage.process(items)
    assert all(it.ok for it in items), [it.reason for it in items]

    # the same scores from the scorer directly: selection really picks the best of all
    scorer = stage.scorer
    from PIL import Image
    for it in items:
        every = json.loads(it.fields["captions_all"])
        assert {c["captioner"] for c in every} == {c["name"] for c in captioners}, every
        assert all(isinstance(c["text"], str) and c["text"] for c in every)
        assert len({c["text"] for c in every}) > 3  # so keep=3 really leaves some out
        assert all(-1.0 <= c["clip_score"] <= 1.0 for c in every)
        direct = scorer.score([Image.fromarray(it.image)], [[c["text"] for c in every]])[0]
        np.testing.assert_allclose([c["clip_score"] for c in every], direct, atol=1e-5)

        top = it.fields["captions"]
        assert len(top) == min(3, len({" ".join(c["text"].lower().split()) for c in every}))
        assert [c["clip_score"] for c in top] == sorted((c["clip_score"] for c in top), reverse=True)
        assert top == cap.select_top(every, 3)
        best = max(c["clip_score"] for c in every)
        assert top[0]["clip_score"] == best
        assert it.fields["caption_top"] == top[0]["text"] and it.fields["clip_score_top"] == best
        # anything left out scores no higher than the last kept caption
        kept = {(c["captioner"], c["text"]) for c in top}
        assert all(c["clip_score"] <= top[-1]["clip_score"] for c in every if (c["captioner"], c["text"]) not in kept)
        assert it.versions["captions"] == "models@1"
    assert stage.manifest_fields == {"captions_all": "string", "caption_top": "string", "clip_score_top": "float32"}


def test_models_backend_batching_is_consistent(tiny_models):
    """Captions of an image do not depend on the batch it is in; beams give several per captioner."""
    spec = [{"name": "blip-a", "kind": "blip", "path": tiny_models["blip-a"],
             "num_beams": 2, "num_return_sequences": 2}]
    ims = crops(3)
    a = [new_item(f"a{i}", im) for i, im in enumerate(ims)]
    b = [new_item(f"b{i}", im) for i, im in enumerate(ims)]
    stage = models_stage(tiny_models, spec, keep=5)
    stage.process(a)
    for it in b:
        stage.process([it])
    for x, y in zip(a, b):
        ex, ey = json.loads(x.fields["captions_all"]), json.loads(y.fields["captions_all"])
        assert [c["text"] for c in ex] == [c["text"] for c in ey]
        np.testing.assert_allclose([c["clip_score"] for c in ex], [c["clip_score"] for c in ey], atol=1e-5)
        assert len(ex) == 2 and all(c["captioner"] == "blip-a" for c in ex)
        assert [c["clip_score"] for c in x.fields["captions"]] == sorted((c["clip_score"] for c in ex), reverse=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_models_backend_fp16_on_gpu(tiny_models):
    captioners = [{"name": n, "kind": k, "path": tiny_models[n]}
                  for n, k in (("blip-a", "blip"), ("git", "git"), ("vit-gpt2", "vision-encoder-decoder"),
                               ("blip2", "blip2"))]
    conf = StageConfig(backend="models", num_gpus=1, batch_size=2,
                       options={"captioners": captioners, "clip": tiny_models["clip"], "max_new_tokens": 6})
    stage = cap.Captions(BuildConfig(), conf)
    items = [new_item(f"g{i}", im) for i, im in enumerate(crops(3))]
    stage.process(items)
    assert all(it.ok for it in items), [it.reason for it in items]
    for c in stage.captioners:  # (BLIP-2 keeps its Q-Former in fp32 by design)
        assert c.dtype == torch.float16 and next(c.model.parameters()).device.type == "cuda"
    assert stage.scorer.model.dtype == torch.float16
    for it in items:
        assert len(json.loads(it.fields["captions_all"])) == 4 and it.fields["clip_score_top"] is not None
