"""End-to-end builds on real photos plus the generated bad corpus."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import webdataset as wds

from denseface.cli import main
from denseface.config import BuildConfig
from denseface.errors import ConfigError
from denseface.etl.build import build_dataset
from denseface.shards.manifest import read_manifest
from denseface.shards.schema import NUM_LANDMARKS, decode_members, is_timing_column
from denseface.shards.verify import verify_dataset
from tests.conftest import BAD_EXPECTED


def _cfg(out, *sources, **kw):
    return BuildConfig(sources=list(sources), out=out, runner="local", workers=1, **kw)


def _manifest_without_timings(root: Path) -> pd.DataFrame:
    df = read_manifest(root)
    return df[[c for c in df.columns if not is_timing_column(c)]].sort_values("key").reset_index(drop=True)


@pytest.fixture(scope="module")
def built(tmp_path_factory, sample_casia, bad_corpus):
    out = tmp_path_factory.mktemp("built")
    result = build_dataset(_cfg(out, f"casia:{sample_casia}", f"casia:{bad_corpus}", shard_size=8), progress=False)
    return out, result


def test_every_input_has_one_row_and_counts_balance(built, sample_casia, bad_corpus):
    out, result = built
    n_inputs = sum(1 for _ in sample_casia.rglob("*.*")) + len(BAD_EXPECTED)
    df = read_manifest(out)
    assert len(df) == n_inputs == result.inputs
    assert df["key"].is_unique
    assert result.balanced and result.inputs == result.accepted + result.rejected + result.errors
    assert result.errors == 0
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["inputs"] == n_inputs and summary["balanced"]


def test_bad_inputs_get_clear_reasons(built):
    out, _ = built
    df = read_manifest(out).set_index("key")
    for name, (status, words) in BAD_EXPECTED.items():
        row = df.loc[f"bad-{Path(name).stem}"]
        assert row["status"] == status, (name, row["reason"])
        assert words in row["reason"], (name, row["reason"])
    assert df.loc["group_photo-t1", "status"] == "rejected"
    assert "multiple faces" in df.loc["group_photo-t1", "reason"]


def test_shards_read_back_with_plain_webdataset(built):
    out, _ = built
    urls = [str(p) for p in sorted(out.glob("shard-*.tar"))]
    samples = list(wds.WebDataset(urls, shardshuffle=False))
    df = read_manifest(out)
    assert sorted(s["__key__"] for s in samples) == sorted(df.loc[df.status == "ok", "key"])
    for raw in samples:
        s = decode_members(raw)
        assert s["jpg"].shape == (512, 512, 3)
        assert s["lmk.npy"].shape == (NUM_LANDMARKS, 3) and s["lmk.npy"].dtype == np.float16
        assert 0.2 < float(s["lmk.npy"][:, 0].mean()) < 0.8  # the face is centred by alignment
        meta = s["json"]
        assert meta["key"] == raw["__key__"] and len(meta["crop_transform"]) == 6
        assert set(meta["versions"]) >= {"decode", "detect_align", "landmarks"}


def test_manifest_has_per_stage_timings_and_summaries(built):
    df = read_manifest(built[0])
    ok = df[df.status == "ok"]
    for col in ("t_decode_ms", "t_detect_align_ms", "t_landmarks_ms"):
        assert ok[col].notna().all() and (ok[col] > 0).all()
    assert (ok["n_faces"] == 1).all() and ok["bbox"].map(len).eq(4).all()
    assert ok["pad_fraction"].between(0, 1).all()


def test_verify_passes_and_cli(built, capsys):
    out, _ = built
    assert verify_dataset(out).ok
    assert main(["shards", "verify", str(out)]) == 0
    assert "OK:" in capsys.readouterr().out


def test_rerun_skips_finished_units(tmp_path, sample_casia):
    cfg = _cfg(tmp_path, f"casia:{sample_casia}", shard_size=4)
    first = build_dataset(cfg, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*.tar")}
    second = build_dataset(cfg, progress=False)
    assert second.units_skipped == first.units_total and second.units_written == 0
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("shard-*.tar")} == before
    assert second.inputs == first.inputs and second.accepted == first.accepted


def test_stale_temp_and_truncated_tar_are_flagged_then_repaired(tmp_path, sample_casia):
    cfg = _cfg(tmp_path, f"casia:{sample_casia}", shard_size=4)
    build_dataset(cfg, progress=False)
    reference = {p.name: p.read_bytes() for p in tmp_path.glob("shard-*.tar")}
    tar = tmp_path / "shard-000001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 3])
    (tmp_path / "shard-000002.tar.tmp-123-0badcafe").write_bytes(b"half")
    report = verify_dataset(tmp_path)
    assert not report.ok
    assert any("truncated" in p or "unreadable" in p for p in report.problems["shard-000001"])
    assert "stale temporary" in report.problems["shard-000002.tar.tmp-123-0badcafe"][0]
    result = build_dataset(cfg, progress=False)
    assert result.units_written == 1
    assert verify_dataset(tmp_path).ok
    assert {p.name: p.read_bytes() for p in tmp_path.glob("shard-*.tar")} == reference  # byte-identical


def _big_tree(root: Path, sample_casia: Path, copies: int) -> Path:
    """Many inputs (copies of the large real photos) so a build takes a few seconds."""
    for i in range(copies):
        for name in ("obama/obama3.jpg", "biden/biden.jpg", "obama/obama.jpg"):
            src = sample_casia / name
            dst = root / f"id{i % 5}" / f"{i:03d}_{src.name}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    return root


def test_killed_build_resumes_to_the_same_dataset(tmp_path, sample_casia):
    src = _big_tree(tmp_path / "src", sample_casia, copies=20)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    cmd = [sys.executable, "-m", "denseface.cli", "build-dataset", "--source", f"casia:{src}", "--runner", "local",
           "--shard-size", "4", "--workers", "1", "--no-progress"]
    proc = subprocess.Popen(cmd + ["--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((killed / "stats").glob("*.json"))) < 3:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list((killed / "stats").glob("*.json")))
    assert proc.returncode == -signal.SIGKILL and 3 <= done_at_kill < 15, done_at_kill
    subprocess.run(cmd + ["--out", str(killed)], check=True, capture_output=True)
    subprocess.run(cmd + ["--out", str(clean)], check=True, capture_output=True)
    pd.testing.assert_frame_equal(_manifest_without_timings(killed), _manifest_without_timings(clean))
    assert len(read_manifest(killed)) == 60
    for tar in sorted(clean.glob("shard-*.tar")):
        assert (killed / tar.name).read_bytes() == tar.read_bytes()
    assert verify_dataset(killed).ok


def test_missing_weights_or_bad_config_fail_before_work(tmp_path, sample_casia):
    with pytest.raises(ConfigError, match="unknown stages"):
        build_dataset(_cfg(tmp_path / "o", f"casia:{sample_casia}", stages={"nonsense": {}}), progress=False)
    assert not (tmp_path / "o").exists()
