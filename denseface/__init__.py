"""dense-face: build the T2I-Dense-Face dataset and train Dense-Face (arXiv 2412.18149)."""

__version__ = "0.1.0"
