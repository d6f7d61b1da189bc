"""Import layering: the geometry package is the bottom layer (it imports nothing else of the project), the
trainer and inspection reach face geometry through it, never through the annotation stages, and shards/ imports
nothing of the layers that use it."""
import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_geometry_imports_no_other_project_module():
    code = ("import sys, pkgutil, importlib, denseface.geometry as g\n"
            "for m in pkgutil.iter_modules(g.__path__): importlib.import_module('denseface.geometry.' + m.name)\n"
            "print(sorted(n for n in sys.modules if n.startswith('denseface')))")
    loaded = ast.literal_eval(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                             text=True).stdout.strip().splitlines()[-1])
    assert {"denseface.geometry.mesh", "denseface.geometry.raster", "denseface.geometry.pose"} <= set(loaded)
    assert [n for n in loaded if n != "denseface" and not n.startswith("denseface.geometry")] == []


def imported_modules(path: pathlib.Path) -> list[str]:
    """Every module a source file imports, at any depth (lazy imports inside functions too)."""
    tree = ast.parse(path.read_text())
    names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    return names + [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]


def test_trainer_and_inspection_do_not_import_annotators():
    for folder in ("train", "denseface/inspection"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            assert not [n for n in imported_modules(path) if n.startswith("denseface.annotators")], path


def test_shards_import_only_shards_and_errors():
    """shards/ owns the dataset format: it reads and writes it for every layer above and imports none of them."""
    for path in sorted((ROOT / "shards").glob("*.py")):
        project = [n for n in imported_modules(path) if n.startswith("denseface")]
        assert all(n.startswith("denseface.shards") or n == "denseface.errors" for n in project), (path, project)
