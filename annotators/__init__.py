"""Annotation stages: one module per stage, pure functions plus a class holding the model."""
import os

# mediapipe's C++ side logs through glog/absl; keep warnings from flooding build output.
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
