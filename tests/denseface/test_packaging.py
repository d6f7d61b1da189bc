"""Install hygiene: namespaced imports from a wheel, and the pinned mediapipe ships its models."""
import subprocess
import sys
import tomllib
import zipfile
from importlib import metadata
from pathlib import Path

import mediapipe

REPO = Path(__file__).resolve().parents[2]


SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]


def source_packages() -> list[str]:
    """Every package folder of the source tree, as its path inside the wheel (``denseface/etl``...)."""
    return sorted(str(Path(pkg.replace(".", "/")) / init.parent.relative_to(REPO / src))
                  for pkg, src in SETUPTOOLS["package-dir"].items() for init in (REPO / src).rglob("__init__.py"))


def test_every_source_package_is_declared():
    """setuptools would still ship an undeclared subpackage as data, with a warning; declare each one."""
    assert sorted(p.replace("/", ".") for p in source_packages()) == sorted(SETUPTOOLS["packages"])


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
    missing = [pkg for pkg in source_packages() if f"{pkg}/__init__.py" not in names]
    assert not missing, f"packages left out of the wheel (pyproject [tool.setuptools] packages): {missing}"
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
