"""The evaluation's one-file HTML page, in the inspection report's style (`denseface.inspection.report`):
the overall and per-subject tables, then per subject a grid of its generated images (thumbnails
as base64 PNG, so the file stands alone; the inspection report's script checks they decode)."""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from denseface.inspection.report import _CSS, _SCRIPT, _na, _table

THUMB = 160  # px, thumbnail side in the grids
GRID_CSS = (".grid{display:flex;flex-wrap:wrap;gap:6px} .cell{width:%dpx;font-size:11px;color:#444} "
            "table.overall,table.subjects{display:block;overflow-x:auto}" % THUMB)


def _thumb(path: str) -> str:
    from denseface.generation.face_region import load_photo

    img = load_photo(path)
    h, w = img.shape[:2]
    s = THUMB / max(h, w)
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_NEAREST
    small = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=interp)
    ok, png = cv2.imencode(".png", np.ascontiguousarray(small[..., ::-1]))
    return base64.b64encode(png.tobytes()).decode("ascii")


def _rows(df: pd.DataFrame) -> tuple[list[list[Any]], list[str]]:
    return df.astype(object).values.tolist(), list(df.columns)  # NaN shows as "n/a"


def _grid(g: pd.DataFrame) -> str:
    cells = []
    for _, r in g.iterrows():
        caption = f"{r['mode']} seed {r['seed']}: {r['prompt'] or ''}"
        cells.append(f'<div class="cell"><img class="plot" alt="{html.escape(caption)}" '
                     f'src="data:image/png;base64,{_thumb(r["path"])}">{html.escape(caption)}</div>')
    return '<div class="grid">' + "".join(cells) + "</div>"


def evaluation_report(per_image: pd.DataFrame, summary: pd.DataFrame, info: dict[str, Any],
                      out_html: str | Path) -> Path:
    body = ["<h1>dense-face evaluation</h1>", '<p id="plots-status">images: not checked (JavaScript off?)</p>',
            '<h2 id="overall">Overall (mean over subjects; FID over all images of a mode)</h2>']
    body.append(_table(*_rows(summary[summary["subject"] == "ALL"]), cls="overall"))
    body += ['<h2 id="subjects">Per subject</h2>', _table(*_rows(summary[summary["subject"] != "ALL"]),
                                                          cls="subjects")]
    failures = info.get("generation_failures") or []
    body.append('<h2 id="failures">Not generated</h2>')
    body.append(_table([[f["subject"], f["mode"], f["seed"], f["reason"]] for f in failures],
                       ["subject", "mode", "seed", "reason"], "failures") if failures else _na("none"))
    body.append('<h2 id="models">Models and settings</h2>')
    body.append(_table(sorted({**info["models"], **info["settings"]}.items()), ["setting", "value"], "config"))
    for subject, g in per_image.groupby("subject", sort=True):
        body += [f'<h2 id="s-{html.escape(subject)}">{html.escape(subject)}</h2>', _grid(g)]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>dense-face evaluation</title><style>{_CSS}{GRID_CSS}</style></head>"
            f"<body>\n{chr(10).join(body)}\n{_SCRIPT}</body></html>\n")
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out
