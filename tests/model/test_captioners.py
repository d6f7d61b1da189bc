"""model/captioners.py is plain model code below the annotation stages: importing it loads no stage
and neither torch nor transformers (the captions stage's template backend imports it and needs neither)."""
import ast
import subprocess
import sys


def test_captioner_models_import_no_stage_and_no_torch():
    code = ("import sys, denseface.model.captioners\n"
            "print(sorted(n for n in sys.modules if n.startswith('denseface') or n in ('torch', 'transformers')))")
    loaded = ast.literal_eval(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                                             text=True).stdout.strip().splitlines()[-1])
    assert "denseface.model.captioners" in loaded
    assert [n for n in loaded if n.startswith("denseface.annotators") or n in ("torch", "transformers")] == []
