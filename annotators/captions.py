"""Captions of the aligned crop (paper §3.4 "Image Caption"): several captioners, CLIP-ranked.

Two backends (``StageConfig.backend``):

``template`` (the default; offline, needs no weights)
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
from dataclasses import fields
from typing import Any, Sequence

import numpy as np

from denseface.annotators.base import Item, Reject, Stage
from denseface.model.captioners import (
    CAPTIONER_KINDS,
    KIND_ALIASES,
    Captioner,
    CaptionerSpec,
    ClipScorer,
    device_dtype,
    resolve_model,
)
from denseface.model_refs import Resolved, require

TEMPLATE = "template"
MODELS = "models"
_GENERATION = ("max_new_tokens", "num_beams", "num_return_sequences")  # per-captioner overrides

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
            h = (f"in profile, facing {side}" if abs(yaw) >= YAW_PROFILE
                 else " ".join(filter(None, ("facing", lv, side))))
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
# The stage
# ---------------------------------------------------------------------------------------


def captioner_spec(entry: dict[str, Any], defaults: dict[str, Any]) -> CaptionerSpec:
    """One ``options.captioners`` entry; generation settings it does not give come from the
    stage-wide options, then from `CaptionerSpec`'s defaults."""
    if not isinstance(entry, dict) or "path" not in entry or "kind" not in entry:
        raise ValueError(f"captions: each captioner needs kind and path, got {entry!r}")
    kind = KIND_ALIASES.get(str(entry["kind"]), str(entry["kind"]))
    if kind not in CAPTIONER_KINDS:
        raise ValueError(f"captions: captioner kind {entry['kind']!r} unknown; kinds are {list(CAPTIONER_KINDS)}")
    gen = {f.name: int(entry.get(f.name, defaults.get(f.name, f.default)))
           for f in fields(CaptionerSpec) if f.name in _GENERATION}
    if gen["num_return_sequences"] > gen["num_beams"]:
        raise ValueError(f"captions: captioner {entry.get('name', kind)!r}: num_return_sequences "
                         f"({gen['num_return_sequences']}) must not exceed num_beams ({gen['num_beams']})")
    return CaptionerSpec(name=str(entry.get("name", kind)), kind=kind, path=str(entry["path"]), **gen)


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
    BACKENDS = (TEMPLATE, MODELS)

    def __init__(self, build, conf=None) -> None:
        super().__init__(build, conf)
        opts = self.conf.options
        self.keep = int(opts.get("keep", 3))
        self.specs: list[CaptionerSpec] = []
        self.clip_path: str | None = None
        self.scale = float(opts.get("clip_score_scale", 1.0))
        if self.backend == MODELS:
            self.specs = [captioner_spec(e, opts) for e in opts.get("captioners") or []]
            self.clip_path = opts.get("clip")
        self.captioners: list[Captioner] = []
        self.scorer: ClipScorer | None = None

    def check(self) -> None:
        if self.backend == TEMPLATE:
            return
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
        device, dtype = device_dtype(self.conf.num_gpus)
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
