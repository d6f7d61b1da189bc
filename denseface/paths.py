"""Where dense-face keeps downloaded packages' data and other caches."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$DENSEFACE_CACHE`` or ``~/.cache/dense-face``: outside the repo, so clones share it."""
    return Path(os.environ.get("DENSEFACE_CACHE", Path.home() / ".cache" / "dense-face"))
