"""What the contact sheet and the report both read from samples and manifest rows.

Head pose is stored in two frames by the head-pose stage: the crop's (no suffix) and the
source photo's (``_src``).
"""
from __future__ import annotations

import math
from typing import Any

POSE_COLUMNS = ("yaw", "pitch", "roll")
POSE_FRAMES = {"": "crop frame (the stored image; alignment levels the eyes)", "_src": "source photo frame"}


def number(v: Any) -> float | None:
    """``v`` as a finite float, None for anything else (absent, NaN, text): a stage not run shows as n/a."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None
