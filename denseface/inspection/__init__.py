"""Looking at a built dataset: `inspect_dataset` (``denseface inspect``) writes the contact
sheet (`contact_sheet`) and the HTML report (`report`) into one folder; SQL over the manifests
is `denseface.shards.manifest`.

The package is ``inspection``, not ``inspect``: a ``denseface/inspect.py`` would shadow the
standard library's ``inspect`` for any script run from this folder (``python
denseface/cli.py`` then fails inside ``dataclasses``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from denseface.inspection.contact_sheet import contact_sheet
from denseface.inspection.report import dataset_report


def inspect_dataset(dataset: str | Path, out_dir: str | Path, n: int = 8, where: str | None = None,
                    seed: int | None = None) -> dict[str, Any]:
    """``out_dir/contact_sheet.png`` and ``out_dir/report.html``; returns their paths and the keys."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = contact_sheet(dataset, out / "contact_sheet.png", n=n, where=where, seed=seed)
    report = dataset_report(dataset, out / "report.html")
    return {"contact_sheet": out / "contact_sheet.png", "report": report, "keys": keys}
