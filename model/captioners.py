"""Captioning models (BLIP, BLIP-2, GIT, ViT-GPT2) and the CLIP scorer, through transformers.

Why apart from the captions stage: this is plain model code (load a ``save_pretrained`` folder
or hub id, caption a batch, score image-text pairs) that knows nothing of items or stage
options; the stage (annotators/captions.py) parses its options into `CaptionerSpec`s and
ranks what these return. torch and transformers are imported inside the functions, so the
stage's offline ``template`` backend never loads them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from denseface.model_refs import Resolved, resolve_pretrained

# kind -> (processor, model) transformers class names
_TRANSFORMERS_CLASSES = {
    "blip": ("BlipProcessor", "BlipForConditionalGeneration"),
    "blip2": ("Blip2Processor", "Blip2ForConditionalGeneration"),
    "git": ("AutoProcessor", "AutoModelForCausalLM"),
    "vision-encoder-decoder": ("ViTImageProcessor", "VisionEncoderDecoderModel"),
}
CAPTIONER_KINDS = tuple(_TRANSFORMERS_CLASSES)
KIND_ALIASES = {"vit-gpt2": "vision-encoder-decoder", "blip-2": "blip2"}
_EXAMPLE_HUB_IDS = {
    "blip": "Salesforce/blip-image-captioning-large",
    "blip2": "Salesforce/blip2-flan-t5-xl",
    "git": "microsoft/git-large-coco",
    "vision-encoder-decoder": "nlpconnect/vit-gpt2-image-captioning",
    "clip": "openai/clip-vit-large-patch14",
}


@dataclass(frozen=True)
class CaptionerSpec:
    """One captioner: its name in the manifest, its family (`CAPTIONER_KINDS`), its reference and
    its generation settings (the defaults are the stage's)."""

    name: str
    kind: str
    path: str
    max_new_tokens: int = 30
    num_beams: int = 1
    num_return_sequences: int = 1


def device_dtype(num_gpus: float):
    """fp16 on the GPU when the stage was given one and CUDA is there, else fp32 on the CPU."""
    import torch

    if num_gpus > 0 and torch.cuda.is_available():
        return torch.device("cuda"), torch.float16
    return torch.device("cpu"), torch.float32


def _dtype_kwargs(dtype) -> dict[str, Any]:
    """from_pretrained kwargs that load the weights straight in ``dtype``."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype" if (major, minor) >= (4, 56) else "torch_dtype": dtype}


def resolve_model(ref: str, what: str, kind: str) -> Resolved:
    """A captioner or CLIP scorer: a transformers ``save_pretrained`` folder or a hub id[@revision]."""
    how = (f"Give a hub id (e.g. {_EXAMPLE_HUB_IDS[kind]}) or a transformers save_pretrained folder "
           f"(config, weights, processor/tokenizer files)")
    return resolve_pretrained(ref, what, how)


def pooled(out):
    """transformers 4.x get_*_features return the tensor, 5.x an output whose pooler_output it is."""
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output


class Captioner:
    """One captioning model from a local ``save_pretrained`` folder; `caption` is batched."""

    def __init__(self, spec: CaptionerSpec, device, dtype) -> None:
        import transformers as tf

        self.spec, self.device, self.dtype = spec, device, dtype
        path, kw = resolve_model(spec.path, spec.name, spec.kind).pretrained_args()
        processor_cls, model_cls = _TRANSFORMERS_CLASSES[spec.kind]  # checked when the spec was parsed
        self.processor = getattr(tf, processor_cls).from_pretrained(path, **kw)
        self.model = getattr(tf, model_cls).from_pretrained(path, **kw, **_dtype_kwargs(dtype))
        # ViT-GPT2's image processor has no tokenizer: the decoder's lives beside it.
        self.tokenizer = (tf.AutoTokenizer.from_pretrained(path, **kw)
                          if spec.kind == "vision-encoder-decoder" else self.processor.tokenizer)
        self.model.to(device).eval()

    def _inputs(self, images):
        enc = self.processor(images=images, return_tensors="pt")
        return enc["pixel_values"].to(self.device, self.dtype)

    def _gen_kwargs(self) -> dict[str, Any]:
        s = self.spec
        kw: dict[str, Any] = {"max_new_tokens": s.max_new_tokens, "num_beams": s.num_beams,
                              "num_return_sequences": s.num_return_sequences, "do_sample": False}
        if s.kind in ("git", "vision-encoder-decoder"):
            gc = self.model.generation_config
            pad = gc.pad_token_id if gc.pad_token_id is not None else self.tokenizer.pad_token_id
            if pad is None:
                pad = gc.eos_token_id if gc.eos_token_id is not None else self.tokenizer.eos_token_id
            if pad is not None:
                kw["pad_token_id"] = pad
        return kw

    def _prompt_len(self) -> int:
        """Tokens the generated ids start with that are not part of the caption."""
        cfg = self.model.config
        if self.spec.kind == "blip":
            return 1  # the [DEC] bos the text decoder starts from
        if self.spec.kind == "blip2" and not cfg.text_config.is_encoder_decoder:
            return int(cfg.num_query_tokens) + 1  # image tokens + bos (transformers >= 4.47)
        return 0

    def caption(self, images: list, batch_size: int) -> list[list[str]]:
        """For each image, ``num_return_sequences`` captions (stripped, possibly empty)."""
        import torch

        n_ret = self.spec.num_return_sequences
        out: list[list[str]] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            with torch.inference_mode():
                ids = self.model.generate(pixel_values=self._inputs(chunk), **self._gen_kwargs())
            ids = ids.detach().cpu()
            skip = self._prompt_len()
            if skip and ids.shape[1] > skip and self.spec.kind == "blip2":
                cfg = self.model.config
                image_tok = getattr(cfg, "image_token_id", None) or getattr(cfg, "image_token_index", None)
                if image_tok is None or not bool((ids[:, 0] == image_tok).all()):
                    skip = 0  # an older transformers that returns only the new tokens
            texts = self.tokenizer.batch_decode(ids[:, skip:], skip_special_tokens=True)
            texts = [" ".join(t.split()) for t in texts]
            out.extend(texts[i * n_ret:(i + 1) * n_ret] for i in range(len(chunk)))
        return out


class ClipScorer:
    """CLIP image-text similarity from a local CLIPModel + CLIPProcessor folder."""

    def __init__(self, path: str, device, dtype, scale: float = 1.0, text_batch: int = 64) -> None:
        import transformers as tf

        path, kw = resolve_model(path, "CLIP scorer", "clip").pretrained_args()
        self.processor = tf.CLIPProcessor.from_pretrained(path, **kw)
        self.model = tf.CLIPModel.from_pretrained(path, **kw, **_dtype_kwargs(dtype)).to(device).eval()
        self.device, self.dtype, self.scale, self.text_batch = device, dtype, float(scale), text_batch

    def image_embeddings(self, images: list, batch_size: int):
        import torch

        feats = []
        for start in range(0, len(images), batch_size):
            enc = self.processor(images=images[start:start + batch_size], return_tensors="pt")
            with torch.inference_mode():
                f = pooled(self.model.get_image_features(pixel_values=enc["pixel_values"].to(self.device, self.dtype)))
            feats.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
        return torch.cat(feats)

    def text_embeddings(self, texts: list[str]):
        import torch

        feats = []
        for start in range(0, len(texts), self.text_batch):
            enc = self.processor(text=texts[start:start + self.text_batch], padding=True, truncation=True,
                                 return_tensors="pt")
            with torch.inference_mode():
                f = pooled(self.model.get_text_features(input_ids=enc["input_ids"].to(self.device),
                                                         attention_mask=enc["attention_mask"].to(self.device)))
            feats.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
        return torch.cat(feats)

    def score(self, images: list, texts: list[list[str]], batch_size: int = 16) -> list[list[float]]:
        """``texts[i]`` scored against ``images[i]``: scale x cosine similarity."""
        img = self.image_embeddings(images, batch_size)
        unique = sorted({t for ts in texts for t in ts})
        if not unique:
            return [[] for _ in texts]
        txt = self.text_embeddings(unique)
        row = {t: j for j, t in enumerate(unique)}
        return [[float(self.scale * (img[i] @ txt[row[t]])) for t in ts] for i, ts in enumerate(texts)]
