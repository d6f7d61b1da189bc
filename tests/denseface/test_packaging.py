"""Install hygiene: namespaced imports from a wheel, and the pinned mediapipe ships its models."""
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import mediapipe

REPO = Path(__file__).resolve().parents[2]


def test_mediapipe_is_a_0_10_wheel_with_face_models():
    assert metadata.version("mediapipe").startswith("0.10.")
    base = Path(mediapipe.__file__).parent / "modules"
    for rel in ("face_landmark/face_landmark_with_attention.tflite",
                "face_detection/face_detection_full_range_sparse.tflite"):
        assert (base / rel).stat().st_size > 100_000, rel
    assert hasattr(mediapipe.solutions, "face_mesh")


def test_wheel_holds_only_the_denseface_namespace_and_imports(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("dense_face-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("dense_face-")}
    assert tops == {"denseface"}, tops
    for pkg in ("etl", "annotators", "shards", "model", "train", "evaluate", "generation", "inspection"):
        assert f"denseface/{pkg}/__init__.py" in names
    code = ("import denseface, denseface.etl.build, denseface.shards.schema, denseface.model, denseface.train;"
            "import importlib.util as u; assert u.find_spec('model') is None and u.find_spec('train') is None;"
            "print(denseface.__file__)")
    out = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(wheel), "PATH": "/usr/bin:/bin"},
                         cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    assert out.strip().startswith(str(wheel))


def test_no_cuda_packages_on_a_cpu_machine():
    import torch

    if torch.version.cuda is not None:
        return  # a GPU machine may carry CUDA wheels; the rule is about CPU machines
    cuda = sorted(d.metadata["Name"] for d in metadata.distributions()
                  if (d.metadata["Name"] or "").lower().startswith(("nvidia-", "cuda-", "triton")))
    assert cuda == [], cuda
