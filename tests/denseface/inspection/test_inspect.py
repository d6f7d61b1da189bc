"""denseface.inspection: contact sheet, HTML report, a headless-browser check of the report."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import tarfile

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from denseface.inspection import inspect_dataset
from denseface.inspection.contact_sheet import HEADER, PANEL, SHEET_WIDTH, contact_sheet, select_samples
from denseface.inspection.report import dataset_report
from denseface.shards.manifest import ManifestError, query_manifest
from denseface.shards.schema import DEPTH, JPG, JSON, LMK, MASK, encode_depth, encode_mask


def _depth_mask_pose(lmk: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """The real annotators where they are importable; otherwise simple stand-ins."""
    try:
        from denseface.geometry.mask import render_pseudo_mask
        from denseface.geometry.pose import pose_from_landmarks
        from denseface.geometry.raster import render_depth

        return render_depth(lmk), render_pseudo_mask(lmk), pose_from_landmarks(lmk)
    except ImportError:
        yy, xx = np.mgrid[:512, :512] / 512.0
        r = np.hypot(xx - 0.5, (yy - 0.5) * 0.8)
        depth = np.where(r < 0.35, 1.0 - r / 0.35 + 1e-3, 0.0).astype(np.float32)
        mask = np.where(r < 0.35, 1, 0).astype(np.uint8)
        mask[(np.abs(xx - 0.5) < 0.04) & (np.abs(yy - 0.55) < 0.1)] = 2
        return depth, mask, (10.0, -5.0, 2.0)


def _rewrite(src, dst, edit_sample, edit_manifest):
    """Copy dataset ``src`` to ``dst``, passing each sample's members (ext -> bytes, in key
    order) through ``edit_sample(i, key, members)`` and each manifest frame through
    ``edit_manifest(df, info)``, ``info`` being what edit_sample returned, by key."""
    shutil.copytree(src, dst)
    info: dict[str, dict] = {}
    for tar_path in sorted(dst.glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            by_key: dict[str, dict[str, bytes]] = {}
            for m in tar:
                if m.isfile():
                    key, _, ext = m.name.partition(".")
                    by_key.setdefault(key, {})[ext] = tar.extractfile(m).read()
        with tarfile.open(tar_path, "w") as tar:
            for i, (key, mem) in enumerate(sorted(by_key.items())):
                info[key] = edit_sample(i, key, mem)
                for ext, data in sorted(mem.items()):
                    ti = tarfile.TarInfo(f"{key}.{ext}")
                    ti.size = len(data)
                    tar.addfile(ti, io.BytesIO(data))
    for pq_path in sorted((dst / "manifest").glob("shard-*.parquet")):
        df = edit_manifest(pq.read_table(pq_path).to_pandas(), info)
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), pq_path)
    return dst


LATER_COLUMNS = ("yaw", "pitch", "roll", "caption_top", "clip_score_top", "captions_all")


@pytest.fixture(scope="module")
def bare_dataset(built_sample, tmp_path_factory):
    """`built_sample` as the first pipeline wrote it: image, json, landmarks only (no depth,
    mask, identity, pose or captions), to check that everything absent shows as n/a."""
    def sample(i, key, mem):
        for ext in list(mem):
            if ext not in (JPG, JSON, LMK):
                del mem[ext]
        meta = json.loads(mem[JSON])
        for k in ("yaw", "pitch", "roll", "yaw_src", "pitch_src", "roll_src", "captions"):
            meta.pop(k, None)
        mem[JSON] = json.dumps(meta, sort_keys=True).encode()

    def manifest(df, info):
        return df.drop(columns=[c for c in df.columns if c in LATER_COLUMNS or c.endswith(("_pnp", "_src"))])

    return _rewrite(built_sample, tmp_path_factory.mktemp("inspect_bare") / "ds", sample, manifest)


@pytest.fixture(scope="module")
def rich_dataset(built_sample, tmp_path_factory):
    """`built_sample` with depth, mask and yaw/pitch/roll added where the build did not produce
    them, and CLIP-scored captions (every other sample; the rest template captions)."""
    def sample(i, key, mem):
        lmk = np.load(io.BytesIO(mem[LMK])).astype(np.float32)
        depth, mask, (yaw, pitch, roll) = _depth_mask_pose(lmk)
        meta = json.loads(mem[JSON])
        for k, v in (("yaw", yaw), ("pitch", pitch), ("roll", roll)):
            meta.setdefault(k, round(v, 2))
        if i % 2:
            meta["captions"] = [{"captioner": "blip", "text": f"a photo of {meta['identity']} smiling at the camera",
                                 "clip_score": 0.30 + 0.01 * i},
                                {"captioner": "git", "text": "a man in a suit", "clip_score": 0.25}]
        else:
            meta["captions"] = [{"captioner": "template", "text": "a close-up photo of a person facing forward",
                                 "clip_score": None}]
        mem[JSON] = json.dumps(meta, sort_keys=True).encode()
        mem.setdefault(DEPTH, encode_depth(depth))
        mem.setdefault(MASK, encode_mask(mask))
        return {"yaw": meta["yaw"], "pitch": meta["pitch"], "roll": meta["roll"],
                "caption_top": meta["captions"][0]["text"], "clip_score_top": meta["captions"][0]["clip_score"],
                "captions_all": json.dumps(meta["captions"])}

    def manifest(df, info):
        for col, typ in zip(LATER_COLUMNS, ("float32", "float32", "float32", object, "float32", object)):
            if col.startswith("caption") or col.startswith("clip") or col not in df.columns:
                df[col] = pd.Series([info.get(k, {}).get(col) if s == "ok" else None
                                     for k, s in zip(df["key"], df["status"])], dtype=typ)
        return df

    return _rewrite(built_sample, tmp_path_factory.mktemp("inspect_rich") / "ds", sample, manifest)


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


# ---- contact sheet ----------------------------------------------------------------------


def test_contact_sheet_size_and_content(built_sample, tmp_path):
    out = tmp_path / "sheet.png"
    keys = contact_sheet(built_sample, out, n=4)
    assert keys == sorted(keys) and len(keys) == 4
    ok_keys = query_manifest(built_sample, "SELECT key FROM manifest WHERE status = 'ok' ORDER BY key")["key"]
    assert keys == list(ok_keys[:4])  # default: first N by key
    img = _png(out)
    assert img.shape == (HEADER + 4 * PANEL, SHEET_WIDTH, 3)
    assert img.std() > 30
    assert img[HEADER:, :PANEL].std() > 20  # the face panels are pictures, not blank


def test_contact_sheet_absent_members_show_na(bare_dataset, tmp_path):
    out = tmp_path / "sheet.png"
    assert len(contact_sheet(bare_dataset, out, n=2)) == 2
    img = _png(out)
    assert img.shape == (HEADER + 2 * PANEL, SHEET_WIDTH, 3)
    for col in (2, 3, 4):  # depth, mask, pose: grey "n/a" panels
        panel = img[HEADER + 60:HEADER + PANEL - 10, col * PANEL + 80:(col + 1) * PANEL - 10]
        assert (panel == 64).all()
    assert img[HEADER:HEADER + PANEL, :PANEL].std() > 20


def test_contact_sheet_with_all_members(rich_dataset, tmp_path):
    out = tmp_path / "sheet.png"
    keys = contact_sheet(rich_dataset, out, n=3, where="yaw IS NOT NULL AND identity <> 'cameraman'")
    assert len(keys) == 3
    img = _png(out)
    assert img.shape == (HEADER + 3 * PANEL, SHEET_WIDTH, 3)
    row = img[HEADER:HEADER + PANEL]
    depth = row[:, 2 * PANEL + 2:3 * PANEL]
    assert (depth.sum(-1) == 0).mean() > 0.2 and depth.std() > 20  # black background + a coloured face
    pose = row[:, 4 * PANEL + 2:5 * PANEL].astype(int)
    red = (pose[..., 0] > 200) & (pose[..., 1] < 80) & (pose[..., 2] < 80)
    assert red.sum() > 20  # the red X axis is drawn over the face


def test_contact_sheet_filter_and_seed(rich_dataset, tmp_path):
    keys = contact_sheet(rich_dataset, tmp_path / "a.png", n=8, where="identity = 'obama'")
    assert keys and all(k.startswith("obama") for k in keys)
    a = contact_sheet(rich_dataset, tmp_path / "b.png", n=3, seed=1)
    assert a == contact_sheet(rich_dataset, tmp_path / "c.png", n=3, seed=1) and a == sorted(a)


def test_filter_matching_nothing_is_a_clear_error(rich_dataset, bare_dataset, tmp_path):
    with pytest.raises(ManifestError, match=r"no accepted samples match --where 'yaw > 1000'"):
        contact_sheet(rich_dataset, tmp_path / "x.png", where="yaw > 1000")
    with pytest.raises(ManifestError, match=r"(?s)not a valid DuckDB condition.*columns: key"):
        select_samples(bare_dataset, where="yaw > 30")  # a dataset built before the head-pose stage
    assert not (tmp_path / "x.png").exists()


# ---- report -----------------------------------------------------------------------------


def _report_checks(html_text: str, root) -> list[str]:
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html_text)
    assert imgs, "no embedded PNG"
    for b in imgs:
        Image.open(io.BytesIO(base64.b64decode(b))).verify()
    summary = json.loads((root / "run_summary.json").read_text())
    for k in ("inputs", "accepted", "rejected"):
        assert re.search(rf"<td>{k}</td><td>{summary[k]}</td>", html_text), k
    assert 'class="versions"' in html_text
    for pkg, ver in summary["versions"].items():
        assert f"<td>{pkg}</td><td>{ver}</td>" in html_text
    assert "detect_align: multiple faces" in html_text
    assert "http://" not in html_text and "https://" not in html_text  # self-contained
    return imgs


def test_report_as_built(built_sample, tmp_path):
    text = dataset_report(built_sample, tmp_path / "report.html").read_text()
    assert len(_report_checks(text, built_sample)) >= 3
    # the pose section says which frame each angle is in, and plots both
    pose = text[text.index('<h2 id="pose">'):]
    pose = pose[:pose.index("<h2", 4)]
    assert "crop frame" in pose and "source photo frame" in pose
    assert "<td>roll</td><td>crop frame" in pose and "<td>roll_src</td><td>source photo frame</td>" in pose


def test_contact_sheet_labels_the_pose_frames():
    from denseface.inspection.contact_sheet import COLUMNS, _row_panels

    assert "pose (crop frame)" in COLUMNS
    meta = {"key": "k", "identity": "i", "yaw": 10.0, "pitch": -5.0, "roll": 0.5,
            "yaw_src": 11.0, "pitch_src": -4.0, "roll_src": 20.0}
    _, texts = _row_panels({JSON: meta}, pd.Series(dtype=object))
    info = next(t for _, _, t, _ in texts if t.startswith("k\n"))
    assert "crop:  yaw +10.0  pitch -5.0  roll +0.5" in info and "photo: yaw +11.0  pitch -4.0  roll +20.0" in info


def test_report_bare_dataset_says_na(bare_dataset, tmp_path):
    out = dataset_report(bare_dataset, tmp_path / "report.html")
    text = out.read_text()
    imgs = _report_checks(text, bare_dataset)
    assert len(imgs) >= 3  # identities, rejections, timing
    assert "head-pose stage has not run" in text and "captions stage has not run" in text


def test_report_rich_dataset(rich_dataset, tmp_path):
    text = dataset_report(rich_dataset, tmp_path / "report.html").read_text()
    imgs = _report_checks(text, rich_dataset)
    assert len(imgs) >= 5
    assert "has not run" not in text
    assert "<td>blip</td>" in text  # per-captioner table from captions_all


def test_inspect_dataset_writes_both(built_sample, tmp_path):
    res = inspect_dataset(built_sample, tmp_path / "insp", n=2)
    assert (tmp_path / "insp" / "contact_sheet.png").is_file() and (tmp_path / "insp" / "report.html").is_file()
    assert len(res["keys"]) == 2


# ---- the report in a headless browser ---------------------------------------------------


def _chromium():
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_report_renders_in_headless_chromium(rich_dataset, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("chromium not installed: apt-get install chromium")
    report = dataset_report(rich_dataset, tmp_path / "report.html")
    n_imgs = report.read_text().count("data:image/png;base64,")
    base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--hide-scrollbars",
            f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "shot.png"
    subprocess.run(base + [f"--screenshot={shot}", "--window-size=1200,2000", report.as_uri()],
                   capture_output=True, timeout=60, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    px = _png(shot).astype(np.float32)
    assert px.std() > 10 and (px < 250).any(axis=-1).mean() > 0.01  # not blank, not all white
    dom = subprocess.run(base + ["--dump-dom", report.as_uri()], capture_output=True, text=True, timeout=60,
                         check=False).stdout
    assert f"plots-ok {n_imgs}" in dom, dom[:500]
