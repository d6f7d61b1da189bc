"""Looking at a built dataset: contact sheets, a one-file HTML report, SQL over the manifests.

* `query_manifest` runs DuckDB SQL over every ``manifest/shard-*.parquet`` of a dataset,
  exposed as one view named ``manifest`` (shards written by different stage sets are
  merged by column name; a column a shard lacks reads as NULL).
* `contact_sheet` draws one row per accepted sample: the image, its 478 landmarks, depth
  (viridis, background black), the 10-class mask in the release's ``Paired`` colours, the
  head-pose axes over the image, and text (key, identity, yaw/pitch/roll, the top caption
  with its CLIP score or "template"). The samples are picked with ``where``, a DuckDB
  SQL boolean expression over the manifest's columns (the same dialect as
  ``denseface manifest query``), e.g. ``"yaw > 30"`` or ``"identity = 'obama' AND
  face_score > 0.9"``; only ``status = 'ok'`` rows are considered. Default: the first ``n``
  by key; with a ``seed``, ``n`` drawn at random (reproducibly), shown in key order.
* `dataset_report` writes one self-contained HTML file (plots as base64 PNG, no external
  resources): counts, head-pose histograms, images per identity, rejection reasons,
  caption length and CLIP-score distributions, per-stage milliseconds per image, the run's
  configuration and versions. A plot whose data the dataset lacks (a stage not run) is a
  line of text saying so. An inline script checks, on load, that every plot decoded and
  writes ``plots-ok N`` (or ``plots-failed K/N``) into ``#plots-status`` and the title.
* `inspect_dataset` is ``denseface inspect``: both files into one folder.

The module is ``inspection``, not ``inspect``: a ``denseface/inspect.py`` would shadow the
standard library's ``inspect`` for any script run from this folder (``python
denseface/cli.py`` then fails inside ``dataclasses``).

Members or columns that a dataset does not have yet (depth, mask, pose, captions) show as
"n/a"; nothing here fails because a stage was not run.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import tarfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from denseface.geometry.mask import colorize
from denseface.shards.schema import DEPTH, JPG, JSON, LMK, MASK, Status, decode_members, is_timing_column

PANEL = 192  # px, each square panel of a contact-sheet row
HEADER = 28  # px, the title strip above the rows
INFO_WIDTH = 2 * PANEL  # px, the text panel at the end of a row
COLUMNS = ("image", "landmarks", "depth", "mask", "pose (crop frame)", "info")
SHEET_WIDTH = 5 * PANEL + INFO_WIDTH
POSE_COLUMNS = ("yaw", "pitch", "roll")
# head_pose stores two frames: the crop's (no suffix) and the source photo's ("_src")
POSE_FRAMES = {"": "crop frame (the stored image; alignment levels the eyes)", "_src": "source photo frame"}


class InspectError(ValueError):
    """A dataset, query or filter problem, with a message meant for the user."""


# ---------------------------------------------------------------------------------------
# Manifests through DuckDB
# ---------------------------------------------------------------------------------------


def manifest_files(dataset: str | Path) -> list[Path]:
    root = Path(dataset)
    if not root.is_dir():
        raise InspectError(f"{root}: not a dataset folder (it does not exist or is not a folder)")
    files = sorted((root / "manifest").glob("shard-*.parquet"))
    if not files:
        raise InspectError(f"{root}: no manifest/shard-*.parquet; is this a built dataset folder?")
    return files


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def connect(dataset: str | Path):
    """An in-memory DuckDB connection with the view ``manifest`` over the dataset's manifests."""
    import duckdb

    files = ", ".join(_sql_str(str(f)) for f in manifest_files(dataset))
    con = duckdb.connect(":memory:")
    con.execute(f"CREATE VIEW manifest AS SELECT * FROM read_parquet([{files}], union_by_name = true)")
    return con


def manifest_columns(con) -> list[str]:
    return [r[0] for r in con.execute("DESCRIBE manifest").fetchall()]


def query_manifest(dataset: str | Path, sql: str) -> pd.DataFrame:
    """Result of DuckDB ``sql`` over the view ``manifest`` (one row per input), e.g.
    ``SELECT identity, count(*) AS n FROM manifest WHERE status = 'ok' GROUP BY 1``."""
    import duckdb

    con = connect(dataset)
    try:
        try:
            return con.execute(sql).df()
        except duckdb.Error as e:
            cols = ", ".join(manifest_columns(con))
            raise InspectError(f"manifest query failed: {e}\n  query: {sql}\n  the view is `manifest`, "
                               f"columns: {cols}") from None
    finally:
        con.close()


# ---------------------------------------------------------------------------------------
# Picking and loading samples
# ---------------------------------------------------------------------------------------


def select_samples(dataset: str | Path, n: int = 8, where: str | None = None,
                   seed: int | None = None) -> pd.DataFrame:
    """Manifest rows of up to ``n`` accepted samples matching ``where`` (a DuckDB boolean
    expression), sorted by key; the first ``n`` by key, or a random ``n`` with ``seed``.
    No match is an `InspectError`."""
    import duckdb

    if n < 1:
        raise InspectError(f"n must be >= 1, got {n}")
    con = connect(dataset)
    try:
        cond = f"status = {_sql_str(Status.OK)}"
        if where and where.strip():
            cond += f" AND ({where})"
        limit = "" if seed is not None else f" LIMIT {int(n)}"
        try:
            keys = [r[0] for r in con.execute(f"SELECT key FROM manifest WHERE {cond} ORDER BY key{limit}").fetchall()]
        except duckdb.Error as e:
            cols = ", ".join(manifest_columns(con))
            raise InspectError(f"--where {where!r} is not a valid DuckDB condition on the manifest: {e}\n"
                               f"  columns: {cols}") from None
        if not keys:
            n_ok = con.execute(f"SELECT count(*) FROM manifest WHERE status = {_sql_str(Status.OK)}").fetchone()[0]
            what = f"match --where {where!r}" if where and where.strip() else "exist"
            raise InspectError(f"no accepted samples {what} in {dataset} "
                               f"({n_ok} accepted in the dataset)")
        if seed is not None and len(keys) > n:
            keys = [keys[i] for i in np.sort(np.random.default_rng(seed).choice(len(keys), size=n, replace=False))]
        con.register("picked", pd.DataFrame({"key": keys}))
        df = con.execute(f"SELECT m.* FROM manifest m JOIN picked USING (key) "
                         f"WHERE m.status = {_sql_str(Status.OK)} ORDER BY m.key").df()
    finally:
        con.close()
    return df.reset_index(drop=True)


def load_samples(dataset: str | Path, rows: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Decoded tar members of the given manifest rows (``key``, ``shard``), by key. Reads
    only the shards that hold them, each once, and stops at the last wanted key."""
    root = Path(dataset)
    out: dict[str, dict[str, Any]] = {}
    for shard, keys in rows.groupby("shard", sort=True)["key"]:
        path = root / f"{shard}.tar"
        if not path.is_file():
            raise InspectError(f"{path}: shard named by the manifest is missing")
        wanted = set(keys)
        raw: dict[str, dict[str, bytes]] = {}
        with tarfile.open(path) as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, _, ext = info.name.rpartition("/")[2].partition(".")
                if key in wanted:
                    raw.setdefault(key, {})[ext] = tar.extractfile(info).read()
                elif len(raw) == len(wanted):
                    break  # members of a key are contiguous: all wanted keys are complete
        for key in keys:
            if key not in raw:
                raise InspectError(f"{path}: has no members for key {key!r} that the manifest lists as ok")
            out[key] = decode_members(raw[key])
    return out


# ---------------------------------------------------------------------------------------
# Contact sheet
# ---------------------------------------------------------------------------------------


def _font(size: int = 14):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 or no FreeType: the bitmap font
        return ImageFont.load_default()


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _depth_rgb(depth: np.ndarray) -> np.ndarray:
    from matplotlib import colormaps

    d = np.asarray(depth, np.float32)
    rgb = (colormaps["viridis"](np.clip(d, 0.0, 1.0))[..., :3] * 255).round().astype(np.uint8)
    rgb[d <= 0] = 0
    return rgb


def _resize(img: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR)
    return cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=interp)


def sample_pose(meta: dict[str, Any], row: pd.Series | dict | None = None,
                frame: str = "") -> tuple[float, float, float] | None:
    """(yaw, pitch, roll) in ``frame`` (a `POSE_FRAMES` suffix) from the sample's json, else
    from its manifest row; None if absent."""
    for src in (meta or {}, row if row is not None else {}):
        vals = [_num(src.get(k + frame)) if hasattr(src, "get") else None for k in POSE_COLUMNS]
        if all(v is not None for v in vals):
            return tuple(vals)  # type: ignore[return-value]
    return None


def sample_caption(meta: dict[str, Any], row: pd.Series | dict | None = None) -> tuple[str, str] | None:
    """(top caption, its label: "CLIP 0.312 (blip)" or "template") or None if absent."""
    caps = (meta or {}).get("captions")
    if isinstance(caps, list) and caps and isinstance(caps[0], dict) and caps[0].get("text"):
        top = caps[0]
        text, score, who = str(top["text"]), _num(top.get("clip_score")), str(top.get("captioner") or "")
    elif row is not None and isinstance(row.get("caption_top"), str) and row.get("caption_top"):
        text, score, who = row["caption_top"], _num(row.get("clip_score_top")), ""
    else:
        return None
    if score is None or who == "template":
        return text, "template"
    return text, f"CLIP {score:.3f}" + (f" ({who})" if who else "")


def _row_panels(sample: dict[str, Any], row: pd.Series) -> tuple[np.ndarray, list[tuple[int, int, str, tuple]]]:
    """One contact-sheet row (PANEL x SHEET_WIDTH RGB) and the text to draw on it."""
    from denseface.geometry.pose_image import draw_pose_axes

    P = PANEL
    strip = np.full((P, SHEET_WIDTH, 3), 255, np.uint8)
    texts: list[tuple[int, int, str, tuple]] = []

    def na(col: int, what: str) -> None:
        strip[:, col * P:(col + 1) * P] = 64
        strip[:, col * P] = 255
        texts.append((col * P + 10, P // 2 - 18, f"{what}\nn/a", (230, 230, 230)))

    image = sample.get(JPG)
    img = _resize(image, P) if isinstance(image, np.ndarray) and image.ndim == 3 else None
    lmk = sample.get(LMK)
    lmk = np.asarray(lmk, np.float32) if isinstance(lmk, np.ndarray) and lmk.ndim == 2 and lmk.shape[1] >= 2 else None

    if img is not None:
        strip[:, 0:P] = img
    else:
        na(0, "image")
    if img is not None and lmk is not None:
        pan = (img.astype(np.float32) * 0.7).astype(np.uint8)
        for x, y in lmk[:, :2] * P:
            if 0 <= x < P and 0 <= y < P:
                cv2.circle(pan, (int(x), int(y)), 1, (0, 255, 0), -1, cv2.LINE_AA)
        strip[:, P:2 * P] = pan
    else:
        na(1, "landmarks")
    depth = sample.get(DEPTH)
    if isinstance(depth, np.ndarray) and depth.ndim == 2:
        strip[:, 2 * P:3 * P] = _resize(_depth_rgb(depth), P)
    else:
        na(2, "depth")
    mask = sample.get(MASK)
    if isinstance(mask, np.ndarray) and mask.ndim == 2:
        strip[:, 3 * P:4 * P] = _resize(colorize(mask), P, nearest=True)
    else:
        na(3, "mask")
    meta = sample.get(JSON) if isinstance(sample.get(JSON), dict) else {}
    pose = sample_pose(meta, row)
    if pose is not None:
        base = (img.astype(np.uint16) + 255) // 2 if img is not None else np.full((P, P, 3), 255)
        center = tuple(float(v) for v in np.clip(lmk[1, :2] * P, 0, P - 1)) if lmk is not None and len(lmk) > 1 else None
        strip[:, 4 * P:5 * P] = draw_pose_axes(*pose, canvas=base.astype(np.uint8), center=center)
    else:
        na(4, "pose")

    # info panel
    x0 = 5 * P + 10
    key = str(meta.get("key") or row.get("key"))
    lines = [key, f"identity: {meta.get('identity') or row.get('identity')}"]
    lines.append("crop:  yaw {:+.1f}  pitch {:+.1f}  roll {:+.1f}".format(*pose) if pose else "yaw/pitch/roll: n/a")
    pose_src = sample_pose(meta, row, "_src")
    if pose_src is not None:
        lines.append("photo: yaw {:+.1f}  pitch {:+.1f}  roll {:+.1f}".format(*pose_src))
    cap = sample_caption(meta, row)
    if cap is None:
        lines.append("caption: n/a")
    else:
        lines.append(f"caption [{cap[1]}]:")
        wrapped = textwrap.wrap(cap[0], width=46)
        lines += wrapped[:6] + (["..."] if len(wrapped) > 6 else [])
    texts.append((x0, 8, "\n".join(lines), (20, 20, 20)))
    return strip, texts


def render_contact_sheet(samples: Sequence[tuple[dict[str, Any], pd.Series]], title: str = ""):
    """PIL image of the sheet: a header strip, then one row per (sample, manifest row)."""
    from PIL import Image, ImageDraw

    sheet = Image.new("RGB", (SHEET_WIDTH, HEADER + PANEL * len(samples)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font, small = _font(14), _font(13)
    draw.rectangle([0, 0, SHEET_WIDTH, HEADER - 1], fill=(40, 40, 40))
    for i, name in enumerate(COLUMNS):
        draw.text((i * PANEL + 8, 6), name if i < 5 else f"{name}  {title}", fill=(255, 255, 255), font=font)
    for r, (sample, row) in enumerate(samples):
        strip, texts = _row_panels(sample, row)
        y = HEADER + r * PANEL
        sheet.paste(Image.fromarray(strip), (0, y))
        for x, ty, text, fill in texts:
            draw.multiline_text((x, y + ty), text, fill=fill, font=small, spacing=3)
        draw.line([0, y, SHEET_WIDTH, y], fill=(255, 255, 255), width=1)
    return sheet


def contact_sheet(dataset: str | Path, out_png: str | Path, n: int = 8, where: str | None = None,
                  seed: int | None = None) -> list[str]:
    """Write a contact sheet of up to ``n`` accepted samples (see the module docstring) to
    ``out_png``: ``SHEET_WIDTH`` x (``HEADER`` + rows * ``PANEL``) px. Returns the keys shown."""
    rows = select_samples(dataset, n=n, where=where, seed=seed)
    samples = load_samples(dataset, rows)
    title = f"where {where}" if where else ""
    sheet = render_contact_sheet([(samples[k], row) for k, (_, row) in zip(rows["key"], rows.iterrows())], title)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG", optimize=False)
    return list(rows["key"])


# ---------------------------------------------------------------------------------------
# HTML report
# ---------------------------------------------------------------------------------------


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
    con = connect(dataset)
    try:
        cols = manifest_columns(con)
        want = ["key", "status", "reason", "identity", "versions", *POSE_COLUMNS,
                *(c + "_src" for c in POSE_COLUMNS), "caption_top", "clip_score_top",
                "captions_all"] + [c for c in cols if is_timing_column(c)]
        sel = ", ".join(f'"{c}"' for c in want if c in cols)
        return con.execute(f"SELECT {sel} FROM manifest").df()
    finally:
        con.close()


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
                    v = _num(c.get("clip_score"))
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


# ---------------------------------------------------------------------------------------
# `denseface inspect`
# ---------------------------------------------------------------------------------------


def inspect_dataset(dataset: str | Path, out_dir: str | Path, n: int = 8, where: str | None = None,
                    seed: int | None = None) -> dict[str, Any]:
    """``out_dir/contact_sheet.png`` and ``out_dir/report.html``; returns their paths and the keys."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = contact_sheet(dataset, out / "contact_sheet.png", n=n, where=where, seed=seed)
    report = dataset_report(dataset, out / "report.html")
    return {"contact_sheet": out / "contact_sheet.png", "report": report, "keys": keys}
