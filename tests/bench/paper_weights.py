"""Random-weight files for every model-backed stage of the paper preset (denseface/configs/paper.yaml),
each in the format its stage's own loader reads, so a whole paper build runs without the published
weights: at the published sizes for timings on a GPU, or tiny for the CPU test.

* restore: codeformer.pth (``{"params_ema": ...}``) and head_pose: hopenet_robust_alpha1.pkl (a state
  dict) are always the published architectures, tiny or not: their stages build those and nothing else.
  The CodeFormer passes its input face through (`annotation_models.pass_input_through`): a random one
  returns noise, in which the landmarks stage after it finds no face, and every image would be rejected;
* identity: an ArcFace IResNet as an ONNX graph (R50 as buffalo_l's w600k_r50.onnx, or a tiny one);
* latent: an SD folder holding the one part the stage reads, ``vae/`` (SD 2.1's VAE, or a tiny one);
* captions: one ``save_pretrained`` folder per captioner and for CLIP, the model from
  `annotation_models.build` with the processor its published repo ships beside it. The tokenizers are
  synthetic (`tests.caption_tokenizers`) and laid out as the published ones: the config's vocabulary
  size, its special tokens at its ids, so that every id a random model generates decodes.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers as tf
import yaml

from denseface.config import preset_path
from tests.bench import annotation_models as am
from tests.bench.gpu_bench import free_memory
from tests.caption_tokenizers import CLIP_SPECIALS, GPT2_SPECIALS, bert_tokenizer, bpe_tokenizer, unigram_tokenizer

# bert-base-uncased's, which BLIP and GIT use; BLIP adds its decoder's bos and an encoder token after them
_BERT = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}
_BLIP = {**_BERT, 30522: "[DEC]", 30523: "[ENC]"}
# facebook/opt-2.7b's, with "Ċ" ("\n", BLIP-2 OPT's eos) and BLIP-2's image token where the hub's are
_OPT = {0: "<s>", 1: "<pad>", 2: "</s>", 3: "<unk>", 50118: "Ċ", 50265: "<image>"}
# google/flan-t5-xl's (sentinels from the end down, as SentencePiece T5 has them) and BLIP-2's image token
_T5 = {0: "<pad>", 1: "</s>", 2: "<unk>", **{32099 - i: f"<extra_id_{i}>" for i in range(100)}, 32100: "<image>"}

# name -> tokenizer of that vocabulary size, as the published repo configures it
_TOKENIZERS: dict[str, Callable[[int], tf.PreTrainedTokenizerBase]] = {
    "blip-large": lambda n: bert_tokenizer(_BLIP, n, bos_token="[DEC]", additional_special_tokens=["[ENC]"],
                                           model_max_length=512),
    "blip2-opt-2.7b": lambda n: bpe_tokenizer(tf.GPT2Tokenizer, False, _OPT, n, bos_token="</s>", eos_token="</s>",
                                              unk_token="<unk>", pad_token="<pad>"),
    "blip2-flan-t5-xl": lambda n: unigram_tokenizer(_T5, n),
    "git-large-coco": lambda n: bert_tokenizer(_BERT, n, model_max_length=512),
    "vit-gpt2": lambda n: bpe_tokenizer(tf.GPT2Tokenizer, False, GPT2_SPECIALS, n),
    am.CLIP: lambda n: bpe_tokenizer(tf.CLIPTokenizer, True, CLIP_SPECIALS, n, model_max_length=77),
}
_TOKENIZERS["blip-base"] = _TOKENIZERS["blip-large"]


def _square(side: int) -> dict[str, int]:
    return {"height": side, "width": side}


def _clip_images(side: int) -> tf.CLIPImageProcessor:
    return tf.CLIPImageProcessor(size={"shortest_edge": side}, crop_size=_square(side))


# model class -> (its image processor at an image size, the processor that pairs it with the tokenizer)
_PROCESSORS: dict[str, tuple[Callable[[int], Any], Callable[..., Any] | None]] = {
    "BlipForConditionalGeneration": (lambda side: tf.BlipImageProcessor(size=_square(side)), tf.BlipProcessor),
    "Blip2ForConditionalGeneration": (lambda side: tf.BlipImageProcessor(size=_square(side)), tf.Blip2Processor),
    "GitForCausalLM": (_clip_images, tf.GitProcessor),
    "VisionEncoderDecoderModel": (lambda side: tf.ViTImageProcessor(size=_square(side)), None),  # tokenizer apart
    "CLIPModel": (_clip_images, tf.CLIPProcessor),
}


def text_values(values: dict[str, Any]) -> dict[str, Any]:
    """The text model's part of `annotation_models.PUBLISHED` config values."""
    return values.get("text_config") or values.get("decoder") or values


def image_side(values: dict[str, Any]) -> int:
    """The vision model's input size in `annotation_models.PUBLISHED` config values."""
    return (values.get("vision_config") or values["encoder"])["image_size"]


def build_processor(name: str, full_size: bool) -> tuple[Any, tf.PreTrainedTokenizerBase]:
    """(processor, tokenizer) of ``name`` (a `annotation_models.PUBLISHED` name) at its model's image size:
    what is saved beside the model. ViT-GPT2's processor is its image processor alone (its stage loads the
    tokenizer apart); BLIP-2's knows the number of query tokens, as the hub's does."""
    values = am.published_values(name, full_size)
    image_cls, processor_cls = _PROCESSORS[am.PUBLISHED[name][0]]
    images = image_cls(image_side(values))
    tokenizer = _TOKENIZERS[name](text_values(values)["vocab_size"])
    if processor_cls is None:
        return images, tokenizer
    extra = {"num_query_tokens": values["num_query_tokens"]} if "num_query_tokens" in values else {}
    return processor_cls(images, tokenizer, **extra), tokenizer


def _save_processor(processor: Any, tokenizer: tf.PreTrainedTokenizerBase, folder: Path) -> Path:
    processor.save_pretrained(folder)
    if getattr(processor, "tokenizer", None) is not tokenizer:
        tokenizer.save_pretrained(folder)
    return folder


def write_processor(name: str, full_size: bool, folder: Path) -> Path:
    """`build_processor`'s pair saved in ``folder``, as the caption stage finds them beside the model."""
    return _save_processor(*build_processor(name, full_size), folder)


def _word_ids(tokenizer: tf.PreTrainedTokenizerBase, values: dict[str, Any]) -> list[int]:
    """Every id but the tokenizer's specials and the model's EOS (BLIP-2 OPT's is a plain "\\n")."""
    banned = {*tokenizer.all_special_ids, text_values(values)["eos_token_id"], values.get("eos_token_id")}
    return [i for i in range(len(tokenizer)) if i not in banned]


def write_transformers_model(name: str, full_size: bool, device: str, folder: Path, seed: int = 0) -> Path:
    """``name``'s random model and processor as a ``save_pretrained`` folder; fp16 on CUDA (the model
    is created there: a BLIP-2 never exists in fp32 or on the host), fp32 on the CPU. A captioner's
    output layer avoids specials and EOS (`annotation_models.favour_words`), so that its captions are
    text and as long as the stage lets them be."""
    processor, tokenizer = build_processor(name, full_size)
    torch.manual_seed(seed)
    model = am.build(name, full_size, device, torch.float16 if device.startswith("cuda") else torch.float32)
    if name in am.CAPTIONERS:
        am.favour_words(model, _word_ids(tokenizer, am.published_values(name, full_size)))
    model.save_pretrained(folder)
    model = None
    free_memory()
    return _save_processor(processor, tokenizer, folder)


def _write_vae(folder: Path, full_size: bool, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL

    from denseface.model.tiny_sd import sd21_vae_config, tiny_vae_config

    torch.manual_seed(seed)
    AutoencoderKL(**(sd21_vae_config() if full_size else tiny_vae_config())).save_pretrained(folder / "vae")
    return folder


def _write_hopenet(path: Path, seed: int = 0) -> Path:
    from denseface.model.hopenet import Hopenet

    torch.manual_seed(seed)
    torch.save(Hopenet().state_dict(), path)
    return path


def _paper_yaml() -> dict[str, Any]:
    return yaml.safe_load(preset_path("paper").read_text())


def paper_captioners() -> list[dict[str, Any]]:
    """The paper preset's captioner entries ({name, kind, path: hub id})."""
    return _paper_yaml()["stages"]["captions"]["options"]["captioners"]


def write_paper_weights(root: Path, full_size: bool, device: str = "cpu") -> dict[str, dict]:
    """Every model of the paper preset's stages under ``root``, random, at the published sizes or tiny
    (CodeFormer and Hopenet are published-size either way); returns the ``stages`` overrides that point
    paper.yaml at them: {"restore": {"weights": ...}, "head_pose": ..., "identity": ..., "latent": ...,
    "captions": {"options": {"clip": ..., "captioners": [paper.yaml's names and kinds, path: a folder]}}}.
    ``sha256: None`` lifts any checksum the preset pins for the published files."""
    root.mkdir(parents=True, exist_ok=True)
    am.write_codeformer(root / "codeformer.pth", pass_through=True)  # noise would leave no face to annotate
    iresnet = {} if full_size else am.TINY_IRESNET
    captioners = [{**c, "path": str(write_transformers_model(c["name"], full_size, device, root / c["name"]))}
                  for c in paper_captioners()]
    return {
        "restore": {"weights": str(root / "codeformer.pth"), "sha256": None},
        "head_pose": {"weights": str(_write_hopenet(root / "hopenet_robust_alpha1.pkl")), "sha256": None},
        "identity": {"weights": str(am.write_iresnet_onnx(root / "w600k_r50.onnx", **iresnet)), "sha256": None},
        "latent": {"weights": str(_write_vae(root / "sd", full_size))},
        "captions": {"options": {"clip": str(write_transformers_model(am.CLIP, full_size, device, root / am.CLIP)),
                                 "captioners": captioners}},
    }


def paper_config_file(stages: dict[str, dict], path: Path) -> Path:
    """paper.yaml with `write_paper_weights`' overrides set over its stages (a stage's ``options``
    merged key by key), written to ``path``: a config file that `denseface.config.load_config` (and
    ``--config``) reads as it reads the preset."""
    data = _paper_yaml()
    for name, override in stages.items():
        stage = data["stages"][name]
        stage.update({k: {**stage.get(k, {}), **v} if isinstance(v, dict) else v for k, v in override.items()})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
