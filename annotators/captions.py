"""Captions of the aligned crop (paper §3.4 "Image Caption"): several captioners, CLIP-ranked.

Two backends (``StageConfig.backend``):

``template`` (also ``default``; offline, needs no weights)
    One caption composed from the annotations already on the item, labelled as such
    (captioner ``"template"``, ``clip_score`` None), e.g.
    ``"a close-up photo of a person facing slightly left, mouth open, eyes open"``.
    See `pose_phrase`, `mouth_state`, `eye_state` for the measures and thresholds.

``models`` (the paper's: BLIP, BLIP-2, GIT, ViT-GPT2 through transformers, CLIP-scored)
    Every captioner captions every crop, CLIP scores every caption, the ``keep`` highest
    are kept. Options (``StageConfig.options``)::

        captioners:            # each one a hub id[@revision] or a transformers ``save_pretrained`` folder
          - {name: blip-large, kind: blip, path: Salesforce/blip-image-captioning-large}
          - {name: blip2-flan-t5-xl, kind: blip2, path: /models/blip2-flan-t5-xl}
          - {name: git-large, kind: git, path: /models/git-large-coco}
          - {name: vit-gpt2, kind: vision-encoder-decoder, path: /models/vit-gpt2-image-captioning}
        clip: openai/clip-vit-large-patch14   # CLIPModel + CLIPProcessor: hub id or folder
        keep: 3                # captions kept per image (the paper keeps 3)
        max_new_tokens: 30
        num_beams: 1           # 1 = greedy
        num_return_sequences: 1   # captions per captioner per image (<= num_beams)
        clip_score_scale: 1.0  # 100 gives torchmetrics-CLIPScore units (without its clamp at 0)

    ``kind`` is one of `CAPTIONER_KINDS`; a captioner entry may override
    ``max_new_tokens``/``num_beams``/``num_return_sequences``. Models run on the GPU in
    fp16 when ``num_gpus > 0`` and CUDA is available, else on the CPU in fp32; images go
    through them ``batch_size`` at a time.

    ``clip_score`` = scale x cosine similarity of CLIP's projected image and text
    embeddings (raw cosine by default, in [-1, 1]; CLIP-L/14 gives ~0.2-0.35 for good
    captions). Empty captions are dropped, and a caption whose text (case- and
    space-insensitive) equals a higher-scored one is not kept twice.

Fields put on the item:

* ``captions``: the kept captions, ``[{"captioner", "text", "clip_score"}]``, best first
  (goes into the sample json);
* ``captions_all``: JSON string of every caption with its score, in captioner order
  (manifest);
* ``caption_top`` / ``clip_score_top``: the best caption and its score (None for the template).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from denseface.annotators.base import Item, Reject, Stage
from denseface.model_refs import Resolved, require, resolve_pretrained

TEMPLATE = "template"
MODELS = "models"
# kind -> (processor, model) transformers class names
_TRANSFORMERS_CLASSES = {
    "blip": ("BlipProcessor", "BlipForConditionalGeneration"),
    "blip2": ("Blip2Processor", "Blip2ForConditionalGeneration"),
    "git": ("AutoProcessor", "AutoModelForCausalLM"),
    "vision-encoder-decoder": ("ViTImageProcessor", "VisionEncoderDecoderModel"),
}
CAPTIONER_KINDS = tuple(_TRANSFORMERS_CLASSES)
_KIND_ALIASES = {"vit-gpt2": "vision-encoder-decoder", "blip-2": "blip2"}
_EXAMPLE_HUB_IDS = {
    "blip": "Salesforce/blip-image-captioning-large",
    "blip2": "Salesforce/blip2-flan-t5-xl",
    "git": "microsoft/git-large-coco",
    "vision-encoder-decoder": "nlpconnect/vit-gpt2-image-captioning",
    "clip": "openai/clip-vit-large-patch14",
}

# ---------------------------------------------------------------------------------------
# Pure functions: measures on the landmarks, template phrasing, top-k selection.
# ---------------------------------------------------------------------------------------

# mediapipe face-mesh indices (478-point topology)
LIP_UPPER_INNER, LIP_LOWER_INNER = 13, 14
FOREHEAD_TOP, CHIN = 10, 152
# (upper lid, lower lid, outer corner, inner corner); "right"/"left" are the subject's.
RIGHT_EYE = (159, 145, 33, 133)  # appears on the image's left
LEFT_EYE = (386, 374, 263, 362)  # appears on the image's right

# Thresholds (documented in the functions that use them).
YAW_SLIGHT, YAW_TURNED, YAW_PROFILE = 10.0, 30.0, 60.0
PITCH_SLIGHT, PITCH_TURNED = 10.0, 25.0
ROLL_TILTED = 15.0
MOUTH_PARTED, MOUTH_OPEN = 0.03, 0.10
EYE_CLOSED = 0.12


def _xy(lmk: np.ndarray, i: int) -> np.ndarray:
    return np.asarray(lmk[i, :2], np.float64)


def mouth_openness(lmk: np.ndarray) -> float:
    """Inner-lip gap (landmarks 13-14) over face height (forehead 10 to chin 152), in the
    image plane. ~0 for closed lips, ~0.08 for a broad smile showing the teeth, > 0.1
    for a mouth open in speech."""
    height = np.linalg.norm(_xy(lmk, FOREHEAD_TOP) - _xy(lmk, CHIN))
    if height <= 0:
        return 0.0
    return float(np.linalg.norm(_xy(lmk, LIP_UPPER_INNER) - _xy(lmk, LIP_LOWER_INNER)) / height)


def eye_openness(lmk: np.ndarray) -> tuple[float, float]:
    """(subject's right, subject's left) eyelid gap (159-145, 386-374) over eye width
    (corner to corner); ~0.2-0.4 for open eyes, < 0.1 for closed ones."""
    out = []
    for up, low, outer, inner in (RIGHT_EYE, LEFT_EYE):
        width = np.linalg.norm(_xy(lmk, outer) - _xy(lmk, inner))
        gap = np.linalg.norm(_xy(lmk, up) - _xy(lmk, low))
        out.append(float(gap / width) if width > 0 else 0.0)
    return out[0], out[1]


def mouth_state(openness: float) -> str:
    """"mouth closed" below `MOUTH_PARTED` (0.03), "mouth slightly open" below `MOUTH_OPEN`
    (0.10), else "mouth open"."""
    if openness < MOUTH_PARTED:
        return "mouth closed"
    if openness < MOUTH_OPEN:
        return "mouth slightly open"
    return "mouth open"


def eye_state(right: float, left: float) -> str:
    """"eyes closed" when both eyes are below `EYE_CLOSED` (0.12), "one eye closed" when
    one is, else "eyes open"."""
    closed = (right < EYE_CLOSED) + (left < EYE_CLOSED)
    return ("eyes open", "one eye closed", "eyes closed")[closed]


def _level(angle: float, slight: float, turned: float) -> str | None:
    a = abs(angle)
    if a < slight:
        return None
    return "slightly" if a < turned else ""


def pose_phrase(yaw: float | None, pitch: float | None, roll: float | None = None) -> str | None:
    """Head-pose words from angles in degrees (head_pose.py's convention: yaw > 0 = face
    turned towards the IMAGE's left, pitch > 0 = looking up, roll > 0 = head top towards
    the image's right). Left/right are the viewer's (the image's), as a caption reads.

    * yaw: |yaw| < 10 nothing, < 30 "slightly left/right", < 60 "left/right", else
      "in profile, facing left/right";
    * pitch: |pitch| < 10 nothing, < 25 "slightly up/down", else "up/down";
    * both below their first threshold: "facing forward";
    * roll: |roll| >= 15 adds "head tilted to the left/right".

    A missing angle (None) says nothing about its direction; None when nothing is known.
    """
    parts: list[str] = []
    h = v = None
    if yaw is not None and not math.isnan(yaw):
        lv = _level(yaw, YAW_SLIGHT, YAW_TURNED)
        if lv is not None:
            side = "left" if yaw > 0 else "right"
            h = f"in profile, facing {side}" if abs(yaw) >= YAW_PROFILE else " ".join(filter(None, ("facing", lv, side)))
    if pitch is not None and not math.isnan(pitch):
        lv = _level(pitch, PITCH_SLIGHT, PITCH_TURNED)
        if lv is not None:
            v = f"{lv} {'up' if pitch > 0 else 'down'}".strip()
    known_h = yaw is not None and not math.isnan(yaw)
    known_v = pitch is not None and not math.isnan(pitch)
    if h and v:
        parts.append(f"{h} and {v}")
    elif h:
        parts.append(h)
    elif v:
        parts.append(f"facing {v}")
    elif known_h and known_v:
        parts.append("facing forward")
    if roll is not None and not math.isnan(roll) and abs(roll) >= ROLL_TILTED:
        parts.append(f"head tilted to the {'right' if roll > 0 else 'left'}")
    return ", ".join(parts) or None


def template_caption(yaw: float | None = None, pitch: float | None = None, roll: float | None = None,
                     lmk: np.ndarray | None = None) -> str:
    """"a close-up photo of a person" + pose words + mouth and eye states (when landmarks
    are given), e.g. "a close-up photo of a person facing slightly left, mouth open, eyes open"."""
    bits = []
    pose = pose_phrase(yaw, pitch, roll)
    if pose:
        bits.append(pose)
    if lmk is not None:
        bits.append(mouth_state(mouth_openness(lmk)))
        bits.append(eye_state(*eye_openness(lmk)))
    text = "a close-up photo of a person"
    if pose:
        text += " " + pose
        bits = bits[1:]
    return ", ".join([text, *bits])


def _norm_text(text: str) -> str:
    return " ".join(text.lower().split())


def select_top(candidates: Sequence[dict[str, Any]], keep: int) -> list[dict[str, Any]]:
    """The ``keep`` best candidates ``{"captioner", "text", "clip_score"}`` by score,
    highest first (ties keep input order; a None score ranks last). Empty texts are
    skipped, and so is a text equal (case/space-insensitive) to one already kept."""
    order = sorted(range(len(candidates)), key=lambda i: (candidates[i].get("clip_score") is None,
                                                          -(candidates[i].get("clip_score") or 0.0), i))
    out, seen = [], set()
    for i in order:
        c = candidates[i]
        t = _norm_text(c.get("text") or "")
        if not t or t in seen:
            continue
        seen.add(t)
        out.append(dict(c))
        if len(out) >= keep:
            break
    return out


def caption_fields(candidates: Sequence[dict[str, Any]], keep: int) -> dict[str, Any]:
    """The item fields for a list of scored candidates (see the module docstring)."""
    top = select_top(candidates, keep)
    return {
        "captions": top,
        "captions_all": json.dumps(list(candidates), ensure_ascii=False),
        "caption_top": top[0]["text"] if top else None,
        "clip_score_top": top[0]["clip_score"] if top else None,
    }


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CaptionerSpec:
    name: str
    kind: str
    path: str
    max_new_tokens: int = 30
    num_beams: int = 1
    num_return_sequences: int = 1

    @classmethod
    def parse(cls, entry: dict[str, Any], defaults: dict[str, Any]) -> "CaptionerSpec":
        if not isinstance(entry, dict) or "path" not in entry or "kind" not in entry:
            raise ValueError(f"captions: each captioner needs kind and path, got {entry!r}")
        kind = _KIND_ALIASES.get(str(entry["kind"]), str(entry["kind"]))
        if kind not in CAPTIONER_KINDS:
            raise ValueError(f"captions: captioner kind {entry['kind']!r} unknown; kinds are {list(CAPTIONER_KINDS)}")
        gen = {k: int(entry.get(k, defaults.get(k, d)))
               for k, d in (("max_new_tokens", 30), ("num_beams", 1), ("num_return_sequences", 1))}
        if gen["num_return_sequences"] > gen["num_beams"]:
            raise ValueError(f"captions: captioner {entry.get('name', kind)!r}: num_return_sequences "
                             f"({gen['num_return_sequences']}) must not exceed num_beams ({gen['num_beams']})")
        return cls(name=str(entry.get("name", kind)), kind=kind, path=str(entry["path"]), **gen)


def _device_dtype(num_gpus: float):
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


def _pooled(out):
    """transformers 4.x get_*_features return the tensor, 5.x an output whose pooler_output it is."""
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output


class Captioner:
    """One captioning model from a local ``save_pretrained`` folder; `caption` is batched."""

    def __init__(self, spec: CaptionerSpec, device, dtype) -> None:
        import transformers as tf

        self.spec, self.device, self.dtype = spec, device, dtype
        path, kw = resolve_model(spec.path, spec.name, spec.kind).pretrained_args()
        processor_cls, model_cls = _TRANSFORMERS_CLASSES[spec.kind]  # CaptionerSpec.parse checked the kind
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
                f = _pooled(self.model.get_image_features(pixel_values=enc["pixel_values"].to(self.device, self.dtype)))
            feats.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
        return torch.cat(feats)

    def text_embeddings(self, texts: list[str]):
        import torch

        feats = []
        for start in range(0, len(texts), self.text_batch):
            enc = self.processor(text=texts[start:start + self.text_batch], padding=True, truncation=True,
                                 return_tensors="pt")
            with torch.inference_mode():
                f = _pooled(self.model.get_text_features(input_ids=enc["input_ids"].to(self.device),
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


# ---------------------------------------------------------------------------------------
# The stage
# ---------------------------------------------------------------------------------------


def _angle(item: Item, name: str) -> float | None:
    v = item.fields.get(name)
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


class Captions(Stage):
    name = "captions"
    version = "1"
    manifest_fields = {"captions_all": "string", "caption_top": "string", "clip_score_top": "float32"}

    def __init__(self, build, conf=None) -> None:
        super().__init__(build, conf)
        backend = self.conf.backend
        self.backend = TEMPLATE if backend in ("default", TEMPLATE) else backend
        opts = self.conf.options
        self.keep = int(opts.get("keep", 3))
        self.specs: list[CaptionerSpec] = []
        self.clip_path: str | None = None
        self.scale = float(opts.get("clip_score_scale", 1.0))
        if self.backend == MODELS:
            self.specs = [CaptionerSpec.parse(e, opts) for e in opts.get("captioners") or []]
            self.clip_path = opts.get("clip")
        self.captioners: list[Captioner] = []
        self.scorer: ClipScorer | None = None

    def check(self) -> None:
        if self.backend == TEMPLATE:
            return
        if self.backend != MODELS:
            raise ValueError(f"captions: backend {self.conf.backend!r} unknown; use 'template' (default) or 'models'")
        if self.keep < 1:
            raise ValueError("captions: options.keep must be >= 1")
        if not self.specs:
            raise ValueError("captions: backend 'models' needs options.captioners: "
                             "[{name, kind, path}], kinds " + ", ".join(CAPTIONER_KINDS))
        if not self.clip_path:
            raise ValueError("captions: backend 'models' needs options.clip, the path of a local CLIP model")
        names = [s.name for s in self.specs]
        if len(set(names)) != len(names):
            raise ValueError(f"captions: captioner names must be unique, got {names}")
        require(self.weights())

    def weights(self) -> list[Resolved]:
        if self.backend != MODELS:
            return []
        found = [resolve_model(s.path, f"captions: captioner {s.name!r} ({s.kind})", s.kind) for s in self.specs]
        if self.clip_path:
            found.append(resolve_model(self.clip_path, "captions: CLIP scorer", "clip"))
        return found

    def setup(self) -> None:
        if self.backend != MODELS:
            return
        device, dtype = _device_dtype(self.conf.num_gpus)
        self.captioners = [Captioner(s, device, dtype) for s in self.specs]
        self.scorer = ClipScorer(self.clip_path, device, dtype, scale=self.scale)

    def process_batch(self, items: list[Item]) -> None:
        if self.backend == TEMPLATE:
            for item in items:
                self._guarded(item, self._template_one)
        else:
            self._models(items)

    def _template_one(self, item: Item) -> None:
        lmk = item.arrays.get("lmk")
        text = template_caption(_angle(item, "yaw"), _angle(item, "pitch"), _angle(item, "roll"), lmk)
        item.fields.update(caption_fields([{"captioner": TEMPLATE, "text": text, "clip_score": None}], 1))

    def _models(self, items: list[Item]) -> None:
        from PIL import Image

        for item in items:
            if item.image is None:
                raise Reject("no image to caption")
        images = [Image.fromarray(np.ascontiguousarray(it.image)).convert("RGB") for it in items]
        bs = self.conf.batch_size
        cands: list[list[dict[str, Any]]] = [[] for _ in items]
        for cap in self.captioners:
            for i, texts in enumerate(cap.caption(images, bs)):
                cands[i].extend({"captioner": cap.spec.name, "text": t} for t in texts if t)
        scores = self.scorer.score(images, [[c["text"] for c in cs] for cs in cands], bs)
        for item, cs, ss in zip(items, cands, scores):
            for c, s in zip(cs, ss):
                c["clip_score"] = round(s, 6)
            item.fields.update(caption_fields(cs, self.keep))
