"""The one-file HTML dataset report: plots as base64 PNG, no external resources.

Counts, head-pose histograms, images per identity, rejection reasons, caption length and
CLIP-score distributions, per-stage milliseconds per image, the run's configuration and
versions. A plot whose data the dataset lacks (a stage not run) is a line of text saying so.
An inline script checks, on load, that every plot decoded and writes ``plots-ok N`` (or
``plots-failed K/N``) into ``#plots-status`` and the title. The evaluation's page reuses its
style (`_CSS`, `_SCRIPT`, `_table`, `_na`).
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from denseface.inspection.fields import POSE_COLUMNS, POSE_FRAMES, number
from denseface.shards.manifest import connect, manifest_columns
from denseface.shards.schema import Status, is_timing_column


def _png_of(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(w: float = 7.0, h: float = 3.2, ncols: int = 1):
    from matplotlib.figure import Figure  # no pyplot: no global backend, Agg through savefig

    fig = Figure(figsize=(w, h))
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _img(fig, alt: str) -> str:
    return f'<img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{_png_of(fig)}">'


def _na(text: str) -> str:
    return f'<p class="na">n/a: {html.escape(text)}</p>'


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None, cls: str = "") -> str:
    out = [f'<table class="{cls}">' if cls else "<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>")
    out.append("</table>")
    return "".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else "n/a"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True)
    return "" if v is None else str(v)


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(d, dict) and d:
        out: list[tuple[str, Any]] = []
        for k in sorted(d):
            out += _flatten(d[k], f"{prefix}.{k}" if prefix else str(k))
        return out
    return [(prefix, d)]


def _numeric(df: pd.DataFrame, col: str) -> np.ndarray:
    if col not in df.columns:
        return np.empty(0)
    v = pd.to_numeric(df[col], errors="coerce").to_numpy(np.float64)
    return v[np.isfinite(v)]


def _read_report_frame(dataset: str | Path) -> pd.DataFrame:
    """The manifest columns the report uses (not the big ones it does not)."""
    with connect(dataset) as con:
        cols = manifest_columns(con)
        want = ["key", "status", "reason", "identity", "versions", *POSE_COLUMNS,
                *(c + "_src" for c in POSE_COLUMNS), "caption_top", "clip_score_top",
                "captions_all"] + [c for c in cols if is_timing_column(c)]
        sel = ", ".join(f'"{c}"' for c in want if c in cols)
        return con.execute(f"SELECT {sel} FROM manifest").df()


def _section_pose(ok: pd.DataFrame) -> str:
    frames = {f: {c: _numeric(ok, c + f) for c in POSE_COLUMNS} for f in POSE_FRAMES}
    frames = {f: vals for f, vals in frames.items() if any(len(v) for v in vals.values())}
    if not frames:
        return _na("no yaw/pitch/roll in the manifest (the head-pose stage has not run on this dataset)")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.0 * len(frames)))
    stats = []
    for row_axes, (f, vals) in zip(fig.subplots(len(frames), 3, squeeze=False), frames.items()):
        for ax, c in zip(row_axes, POSE_COLUMNS):
            v = vals[c]
            if len(v):
                ax.hist(v, bins=36, range=(-90, 90), color="#4477aa")  # 5-degree bins
                ax.set_title(f"{c}{f} (deg, {POSE_FRAMES[f].split(' (')[0]}), n={len(v)}", fontsize=9)
            else:
                ax.set_title(f"{c}{f}: n/a")
            ax.set_xlim(-90, 90)
        stats += [[c + f, POSE_FRAMES[f], len(v), *(np.percentile(v, [0, 50, 100]) if len(v) else [None] * 3)]
                  for c, v in vals.items()]
    note = ("<p>Angles in degrees. <b>crop frame</b> (<code>yaw</code>, <code>pitch</code>, <code>roll</code>): "
            "the stored 512 crop, whose alignment levels the eyes, so roll is near 0; <b>source photo frame</b> "
            "(<code>*_src</code>): the crop's rotation undone. roll &gt; 0: clockwise in that image.</p>")
    return note + _img(fig, "head pose histograms") + _table(stats, ["angle", "frame", "n", "min", "median", "max"])


def _section_identities(ok: pd.DataFrame) -> str:
    from matplotlib.ticker import MaxNLocator

    if "identity" not in ok.columns or ok["identity"].isna().all() or ok.empty:
        return _na("no accepted samples with an identity")
    counts = ok["identity"].fillna("(none)").value_counts()
    n = len(counts)
    summary = (f"<p>{n} identities, {int(counts.sum())} accepted images; images per identity: "
               f"min {counts.min()}, median {counts.median():g}, max {counts.max()}</p>")
    if n <= 40:
        fig, (ax,) = _figure(7, max(1.6, 0.28 * n + 0.8))
        c = counts.sort_values()
        ax.barh([str(i) for i in c.index], c.to_numpy(), color="#228833")
        ax.set_xlabel("accepted images")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        return summary + _img(fig, "images per identity")
    fig, (ax1, ax2) = _figure(11, 4.0, 2)
    ax1.hist(counts.to_numpy(), bins=40, color="#228833")
    ax1.set_xlabel("images per identity")
    ax1.set_ylabel("identities")
    top = counts.head(20).sort_values()
    ax2.barh([str(i) for i in top.index], top.to_numpy(), color="#228833")
    ax2.set_title("top 20 identities")
    return summary + _img(fig, "images per identity")


def _section_rejections(df: pd.DataFrame) -> str:
    from matplotlib.ticker import MaxNLocator

    bad = df[df["status"] != Status.OK]
    if bad.empty:
        return "<p>no rejected or failed inputs</p>"
    label = bad["status"].astype(str) + ": " + bad["reason"].fillna("").astype(str)
    counts = label.value_counts()
    fig, (ax,) = _figure(8, max(1.6, 0.3 * min(len(counts), 30) + 0.8))
    c = counts.head(30).sort_values()
    ax.barh([t if len(t) <= 60 else t[:57] + "..." for t in c.index], c.to_numpy(), color="#cc6677")
    ax.set_xlabel("inputs")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _img(fig, "rejection reasons") + _table(list(counts.items()), ["status: reason", "inputs"])


def _section_captions(ok: pd.DataFrame) -> str:
    from matplotlib.ticker import MaxNLocator

    parts = []
    caps = ok["caption_top"].dropna().astype(str) if "caption_top" in ok.columns else pd.Series([], dtype=str)
    scores = _numeric(ok, "clip_score_top")
    if len(caps) == 0:
        return _na("no captions in the manifest (the captions stage has not run on this dataset)")
    words = caps.str.split().str.len().to_numpy()
    fig, axes = _figure(10, 3.0, 2)
    lo, hi = int(words.min()), int(words.max())
    step = max(1, (hi - lo + 1) // 40)
    axes[0].hist(words, bins=np.arange(lo, hi + step + 1, step) - 0.5, color="#aa3377")
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_title(f"top caption length (words), n={len(words)}")
    if len(scores):
        axes[1].hist(scores, bins=30, color="#66ccee")
        axes[1].set_title(f"top caption CLIP score, n={len(scores)}")
    else:
        axes[1].text(0.5, 0.5, "no CLIP scores\n(template captions)", ha="center", va="center")
        axes[1].set_axis_off()
    parts.append(_img(fig, "caption length and CLIP score"))
    if not len(scores):
        parts.append(_na("CLIP scores: every top caption is a template caption (no CLIP scorer ran)"))
    if "captions_all" in ok.columns:
        per: dict[str, list[float]] = {}
        for s in ok["captions_all"].dropna():
            try:
                cands = json.loads(s)
            except (TypeError, ValueError):
                continue
            for c in cands if isinstance(cands, list) else []:
                if isinstance(c, dict):
                    v = number(c.get("clip_score"))
                    per.setdefault(str(c.get("captioner")), []).append(np.nan if v is None else v)
        if per:
            rows = [[k, len(v), float(np.nanmean(v)) if np.isfinite(v).any() else None]
                    for k, v in sorted(per.items()) for v in [np.asarray(v, np.float64)]]
            parts.append(_table(rows, ["captioner", "candidates", "mean CLIP score"]))
    return "".join(parts)


def _section_timing(df: pd.DataFrame, summary: dict[str, Any]) -> str:
    cols = [c for c in df.columns if is_timing_column(c)]
    rows = []
    for c in cols:
        v = _numeric(df, c)
        if len(v):
            rows.append([c[2:-3], len(v), float(v.mean()), float(np.median(v)), float(np.percentile(v, 95))])
    if not rows:
        return _na("no t_<stage>_ms timing columns in the manifest")
    fig, (ax,) = _figure(7, max(1.6, 0.35 * len(rows) + 0.8))
    ax.barh([r[0] for r in rows][::-1], [r[2] for r in rows][::-1], color="#ccbb44")
    ax.set_xlabel("mean ms per image")
    out = _img(fig, "milliseconds per image per stage")
    out += _table(rows, ["stage", "rows", "mean ms", "median ms", "p95 ms"])
    if isinstance(summary.get("ms_per_image"), dict):
        out += "<p>run_summary.json ms_per_image:</p>" + _table(sorted(summary["ms_per_image"].items()),
                                                                 ["stage", "ms per image"])
    return out


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1150px}
h1{font-size:22px} h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0;font-size:13px} td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f0f0f0} img.plot{display:block;max-width:100%;margin:8px 0} .na{color:#888;font-style:italic}
#plots-status{font-size:12px;color:#666}
"""

_SCRIPT = """
<script>
window.addEventListener("load", function () {
  var imgs = document.querySelectorAll("img.plot"), ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  var s = (ok === imgs.length) ? "plots-ok " + ok : "plots-failed " + (imgs.length - ok) + "/" + imgs.length;
  document.getElementById("plots-status").textContent = s;
  document.title = s + " | " + document.title;
});
</script>
"""


def dataset_report(dataset: str | Path, out_html: str | Path) -> Path:
    """Write the one-file HTML report of ``dataset`` (see the module docstring)."""
    root = Path(dataset)
    df = _read_report_frame(root)
    summary: dict[str, Any] = {}
    sp = root / "run_summary.json"
    if sp.is_file():
        try:
            summary = json.loads(sp.read_text())
        except ValueError:
            summary = {}
    ok = df[df["status"] == Status.OK]
    n_in, n_ok = len(df), len(ok)
    n_rej, n_err = int((df["status"] == Status.REJECTED).sum()), int((df["status"] == Status.ERROR).sum())

    body = [f"<h1>dense-face dataset report</h1><p><code>{html.escape(str(root.resolve()))}</code></p>",
            '<p id="plots-status">plots: not checked (JavaScript off?)</p>']
    counts = [["inputs", n_in], ["accepted", n_ok], ["rejected", n_rej], ["errors", n_err],
              ["balanced (inputs == accepted + rejected + errors)", "yes" if n_in == n_ok + n_rej + n_err else "NO"]]
    for k in ("units_total", "units_written", "units_skipped", "seconds", "finished"):
        if k in summary:
            counts.append([k, summary[k]])
    if summary and any(summary.get(k) not in (None, v) for k, v in
                       (("inputs", n_in), ("accepted", n_ok), ("rejected", n_rej), ("errors", n_err))):
        counts.append(["note", "run_summary.json counts differ from the manifests (the table shows the manifests)"])
    body += ['<h2 id="counts">Counts</h2>', _table(counts, ["", "value"], "counts")]
    body += ['<h2 id="pose">Head pose</h2>', _section_pose(ok)]
    body += ['<h2 id="identities">Images per identity</h2>', _section_identities(ok)]
    body += ['<h2 id="rejections">Rejection reasons</h2>', _section_rejections(df)]
    body += ['<h2 id="captions">Captions</h2>', _section_captions(ok)]
    body += ['<h2 id="timing">Milliseconds per image, per stage</h2>', _section_timing(df, summary)]

    body.append('<h2 id="versions">Versions</h2>')
    if isinstance(summary.get("versions"), dict):
        body.append(_table(sorted(summary["versions"].items()), ["package", "version"], "versions"))
    else:
        body.append(_na("no versions in run_summary.json"))
    if isinstance(summary.get("stages"), list):
        body.append(_table([[s] for s in summary["stages"]], ["stage:backend@version (run)"], "stages"))
    if "versions" in df.columns:
        vc = df["versions"].dropna().value_counts()
        if len(vc):
            body.append("<p>stage versions recorded in the manifest rows:</p>")
            body.append(_table(list(vc.items()), ["versions", "rows"], "row-versions"))
    body.append('<h2 id="config">Configuration</h2>')
    if isinstance(summary.get("config"), dict):
        body.append(_table(_flatten(summary["config"]), ["setting", "value"], "config"))
    else:
        body.append(_na("no config in run_summary.json"))

    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>dense-face report: {html.escape(root.name)}</title><style>{_CSS}</style></head>"
            f"<body>\n{chr(10).join(body)}\n{_SCRIPT}</body></html>\n")
    out = Path(out_html)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
