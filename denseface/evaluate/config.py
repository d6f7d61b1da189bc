"""``denseface evaluate``'s settings: what to generate and score, on top of generation's own
(`GenerationSettings`: model, seed, steps, guidance, device), so those are declared once."""
from __future__ import annotations

from pathlib import Path

from pydantic import Field

from denseface.config import flag
from denseface.evaluate.scorers import METRICS, ModelRefs
from denseface.generation.config import GenerationSettings


class EvaluateConfig(GenerationSettings):
    """One evaluation run (`denseface.evaluate.runner.evaluate`); ``models``: the metrics' models."""

    subjects: Path = flag(help="SUBJECTS/<subject>/<photos>: real reference photos")
    prompts: Path | None = flag(None, help="text file, one prompt a line (required unless --images)")
    targets: Path | None = flag(None, help="folder of photos: also evaluate face swap onto each of them")
    images: Path | None = flag(None, help="IMAGES/<subject>/<images> made elsewhere: score them, generate nothing")
    out: Path = flag(help="folder for images/, summary.csv, per_image.csv, metrics.json, report.html")
    n: int = flag(4, help="images per subject and prompt (and target); seeds SEED..SEED+N-1")
    metrics: str | None = flag(None, help=f"comma-separated subset of {', '.join(METRICS)}; 'paper' (default: all "
                               "but id_dlib) or 'all'")
    models: ModelRefs = Field(default_factory=ModelRefs)
