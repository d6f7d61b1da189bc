"""What is evaluated, on disk: subjects, prompts, and the evaluated images with their sidecars.

* subjects: ``SUBJECTS/<subject>/<photo>`` (the real reference photos of each subject);
* prompts: a text file, one prompt a line (blank lines and ``#`` comments skipped);
* evaluated images: ``IMAGES/<subject>/<name>.<png|jpg|...>``, each with an optional
  ``<name>.json`` sidecar: ``mode`` ("text" or "swap"), ``prompt``, ``seed``, ``reference``,
  ``target``, ``pose_condition`` ({yaw, pitch, roll} in the project's convention, or null),
  ``clip_text`` (CLIP-T's text when not the prompt: Dense-Face's prompt with a written identity
  placeholder ``*`` read as its anchor word, as G1 reads it).
  ``denseface evaluate`` writes this layout; images made by other methods need only the
  folders (and a sidecar with the prompt for CLIP-T, the conditioning pose for pose accuracy).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from denseface.etl.readers import IMAGE_EXTS

POSE_KEYS = ("yaw", "pitch", "roll")


class EvalInputError(ValueError):
    """A user input problem (missing folder, empty prompt file, ...), with a message for the user."""


@dataclass
class EvalImage:
    """One evaluated image and what it was made from."""

    subject: str
    path: str
    mode: str = "text"
    prompt: str | None = None
    seed: int | None = None
    reference: str | None = None
    target: str | None = None
    pose_condition: dict[str, float] | None = None
    clip_text: str | None = None  # what CLIP-T compares with, when not the prompt itself

    @property
    def text(self) -> str | None:
        return self.clip_text or self.prompt

    def sidecar(self) -> dict:
        d = asdict(self)
        d.pop("path")
        return d


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def read_subjects(root: str | Path) -> dict[str, list[Path]]:
    """Subject name -> its photos (sorted); subjects without photos are an error."""
    root = Path(root)
    if not root.is_dir():
        raise EvalInputError(f"--subjects {root}: not a folder (want SUBJECTS/<subject>/<photos>)")
    subjects = {d.name: images_in(d) for d in sorted(root.iterdir()) if d.is_dir()}
    empty = [s for s, photos in subjects.items() if not photos]
    if not subjects:
        raise EvalInputError(f"--subjects {root}: no subject folders (want SUBJECTS/<subject>/<photos>)")
    if empty:
        raise EvalInputError(f"--subjects {root}: no photos in {', '.join(empty)}")
    return subjects


def read_prompts(path: str | Path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"--prompts {path}: no such file (one prompt a line)")
    prompts = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise EvalInputError(f"--prompts {path}: no prompts in it")
    return prompts


def write_image(record: EvalImage) -> None:
    Path(record.path).with_suffix(".json").write_text(json.dumps(record.sidecar(), indent=2))


def read_images(root: str | Path) -> list[EvalImage]:
    """Every image under ``root/<subject>/`` with its sidecar fields (defaults without one)."""
    root = Path(root)
    if not root.is_dir():
        raise EvalInputError(f"--images {root}: not a folder (want IMAGES/<subject>/<images>)")
    out = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for img in images_in(d):
            side = img.with_suffix(".json")
            meta = json.loads(side.read_text()) if side.is_file() else {}
            pose = meta.get("pose_condition")
            if pose is not None and not all(isinstance(pose.get(k), (int, float)) for k in POSE_KEYS):
                raise EvalInputError(f"{side}: pose_condition must hold numbers {POSE_KEYS}, got {pose}")
            out.append(EvalImage(subject=d.name, path=str(img), mode=meta.get("mode", "text"),
                                 prompt=meta.get("prompt"), seed=meta.get("seed"), reference=meta.get("reference"),
                                 target=meta.get("target"), pose_condition=pose, clip_text=meta.get("clip_text")))
    if not out:
        raise EvalInputError(f"--images {root}: no images in IMAGES/<subject>/ folders")
    return out
