"""Generation's settings, each declared once: the sampler fallbacks and the config models whose
fields are ``denseface generate``'s flags (and, through `GenerationSettings`, ``denseface evaluate``'s).

Why apart from `denseface.generation.pipeline`: the command line builds every parser from these
models, and must not import diffusers (seconds) to do so.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from denseface.config import flag

if TYPE_CHECKING:
    from denseface.model.dense_face import DenseFaceConfig

DEFAULT_STEPS = 25  # DDIM steps of a model that records none
DEFAULT_GUIDANCE = 7.5  # classifier-free guidance scale of a model that records none


def sampler_settings(config: DenseFaceConfig, steps: int | None = None,
                     guidance: float | None = None) -> tuple[int, float]:
    """(steps, guidance): the given ones, else the model's (an imported release records DDIM 50,
    CFG 4 in ``extra["sampler"]``), else `DEFAULT_STEPS` / `DEFAULT_GUIDANCE`."""
    recorded = config.extra.get("sampler", {})
    return (int(steps or recorded.get("steps", DEFAULT_STEPS)),
            float(guidance if guidance is not None else recorded.get("guidance", DEFAULT_GUIDANCE)))


class GenerationSettings(BaseModel):
    """Which model generates and how it samples: shared by ``generate`` and ``evaluate``."""

    model_config = ConfigDict(extra="forbid")

    pretrained: str | None = flag(None, help="SD 2.1: hub id[@revision] or diffusers folder, or a saved "
                                  "DenseFacePipeline (default: the tiny offline model)")
    weights: Path | None = flag(None, help="Dense-Face folder from DenseFace.save_trained / a training checkpoint "
                                "(default: the pipeline folder's dense_face/, else untrained)")
    id_weights: str | None = flag(None, help="identity backend weights (ArcFace .onnx; dlib default needs none)")
    seed: int = flag(0, help="random seed (evaluate: image k gets SEED + k)")
    steps: int | None = flag(None, help=f"DDIM steps (default: the model's, 50 for an imported release; "
                             f"else {DEFAULT_STEPS})")
    guidance: float | None = flag(None, help=f"classifier-free guidance scale (default: the model's, 4 for an "
                                  f"imported release; else {DEFAULT_GUIDANCE})")
    device: str | None = flag(None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")


class GenerateConfig(GenerationSettings):
    """One ``denseface generate`` run: text mode (``prompt``) or face swap (``target``)."""

    prompt: str | None = flag(None, help="text prompt (required without --target; face swap default: 'a photo "
                              "of a face'); write * where the identity goes (default: in front; see README)")
    reference: Path = flag(help="photo of the identity to generate")
    target: Path | None = flag(None, help="face swap: repaint the face of this photo instead of a G1 image")
    id_backend: Literal["dlib", "arcface", "irse50"] | None = flag(
        None, help="identity backend; must be the one the model was trained with (default: the recorded one)")
    negative_prompt: str = flag("", help="negative prompt for CFG (default empty)")
    size: int | None = flag(None, help="G1 base image size in px (default: the model's, 512 SD 2.1-base, 64 tiny)")
    strength: float = flag(1.0, help="G2 start noise level in (0, 1]; 1 is full noise")
    face_box: tuple[float, float, float, float] | None = flag(
        None, metavar="X0,Y0,X1,Y1", help="the face in the base/target image, in pixels, instead of detection")
    fp16: bool = flag(False, help="half precision (GPU)")
    out: Path = flag(help="final image (PNG); OUT_panels.png (base | crop | mask | final) and OUT.json beside it")

    @field_validator("face_box", mode="before")
    @classmethod
    def _box_from_text(cls, v: Any) -> Any:
        """``--face-box`` gives "x0,y0,x1,y1"; YAML or Python give the numbers."""
        if not isinstance(v, str):
            return v
        try:
            vals = tuple(float(x) for x in v.split(","))
        except ValueError:
            vals = ()
        if len(vals) != 4:
            raise ValueError(f"--face-box wants x0,y0,x1,y1 in pixels, got {v!r}")
        return vals
