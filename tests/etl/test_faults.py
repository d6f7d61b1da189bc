"""Fault injection: a Ray worker killed mid-build, a driver killed mid-build, and the
decoder and index parsers fed random bytes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from denseface.annotators.base import Reject
from denseface.annotators.decode import decode_image
from denseface.config import BuildConfig
from denseface.etl.build import build_dataset
from denseface.etl.readers import read_celeba, read_release
from denseface.shards.manifest import read_manifest
from denseface.shards.verify import verify_dataset
from tests.etl.test_build import _big_tree, _manifest_without_timings


def _stage_worker_pids() -> list[int]:
    """Processes of Ray Data's stage actors (their title is ``ray::MapWorker(...)``)."""
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if "ray::MapWorker" in " ".join(p.info["cmdline"] or [])]


@pytest.mark.ray
def test_killed_ray_worker_is_replaced_and_no_key_is_lost_or_doubled(tmp_path, sample_casia):
    import ray

    src = _big_tree(tmp_path / "src", sample_casia, copies=12)
    out = tmp_path / "out"
    killed: list[int] = []

    def killer() -> None:
        deadline = time.time() + 180
        while time.time() < deadline and len(list((out / "stats").glob("*.json"))) < 1:
            time.sleep(0.05)
        pids = _stage_worker_pids()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        res = build_dataset(BuildConfig(sources=[f"casia:{src}"], out=out, runner="ray", workers=2, shard_size=3),
                            progress=False)
    finally:
        ray.shutdown()
    thread.join()
    assert killed, "no stage worker was found to kill"
    assert res.units_written < res.units_total or res.units_written == res.units_total
    df = read_manifest(out)
    assert len(df) == 36 and df["key"].is_unique
    assert (df["status"] == "ok").all(), df.loc[df.status != "ok", "reason"].tolist()
    assert verify_dataset(out).ok


@pytest.mark.slow
@pytest.mark.ray
def test_killed_ray_build_resumes_to_the_same_dataset(tmp_path, sample_casia):
    src = _big_tree(tmp_path / "src", sample_casia, copies=12)
    cmd = [sys.executable, "-m", "denseface.cli", "build-dataset", "--source", f"casia:{src}", "--runner", "ray",
           "--shard-size", "3", "--workers", "2", "--no-progress"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(cmd + ["--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and len(list((killed / "stats").glob("*.json"))) < 2:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait()
    assert len(list((killed / "stats").glob("*.json"))) < 12
    subprocess.run(cmd + ["--out", str(killed)], check=True, capture_output=True)
    subprocess.run(cmd + ["--out", str(clean)], check=True, capture_output=True)
    pd.testing.assert_frame_equal(_manifest_without_timings(killed), _manifest_without_timings(clean))
    assert verify_dataset(killed).ok


FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.binary(max_size=4096), prefix=st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0",
                                                               b"GIF89a", b"BM", b"RIFF"]))
def test_decoder_never_crashes_on_random_bytes(tmp_path, data, prefix):
    path = tmp_path / "fuzz.img"
    path.write_bytes(prefix + data)
    try:
        rgb, _ = decode_image(str(path), max_bytes=1 << 20, max_pixels=4_000_000, min_side=1)
    except Reject as exc:
        assert str(exc)  # a reason, always
    else:
        assert rgb.ndim == 3 and rgb.shape[2] == 3


_lines = st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60), max_size=20)


@FUZZ
@given(identity=_lines, attrs=_lines, bbox=_lines)
def test_celeba_index_parsers_never_crash(tmp_path, identity, attrs, bbox):
    root = tmp_path / "celeba"
    (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    for name, lines in (("identity_CelebA.txt", identity), ("list_attr_celeba.txt", attrs),
                        ("list_bbox_celeba.txt", bbox)):
        (root / name).write_text("\n".join(lines), encoding="utf-8", errors="replace")
    recs = [r for r in read_celeba(root) if not r.skip]  # skipped: junk lines of the optional tables
    index = (root / "identity_CelebA.txt").read_text("utf-8-sig", errors="replace")
    nonblank = [ln for ln in index.split("\n") if ln.split()]
    assert len(recs) == len(nonblank)  # every index line is one record: good or an error row
    assert all(r.error or (r.identity.isdigit() and Path(r.source_path).parent.name == "img_align_celeba")
               for r in recs)


@FUZZ
@given(rows=st.lists(st.lists(st.text(max_size=30), max_size=18), max_size=12))
def test_release_index_parser_never_crashes(tmp_path, rows):
    import csv

    root = tmp_path / "release"
    root.mkdir(exist_ok=True)
    with open(root / "casiaFacesDataset256_fuzz_headpose.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["header"]] + rows)
    recs = list(read_release(root))
    assert len(recs) == len(rows)
    for r in recs:
        if not r.error:
            assert Path(r.source_path).resolve().is_relative_to(root.resolve())


def _losses(run: Path) -> dict[int, dict]:
    """step -> logged losses; a step logged twice (redone after a resume) keeps its last value."""
    import json

    rows = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows}


def test_killed_trainer_resumes_on_the_same_batches(tmp_path):
    """SIGKILL mid-epoch, resume from the last checkpoint: the steps after it see the same
    batches (so the same losses) as an uninterrupted run: nothing skipped, nothing doubled."""
    from denseface.train.synthetic import write_synthetic_dataset

    data = tmp_path / "data"
    write_synthetic_dataset(data, identities=3, per_identity=6, shards=3)
    base = [sys.executable, "-m", "denseface.cli", "train", "--data", str(data), "--steps", "30",
            "--checkpoint-every", "5", "--batch-size", "4", "--workers", "2", "--lr", "1e-3", "--seed", "3",
            "--no-progress", "--no-tensorboard"]
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    proc = subprocess.Popen(base + ["--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and not (killed / "checkpoints" / "step-000010").exists():
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _losses(killed)
    assert proc.returncode == -signal.SIGKILL and max(done) < 30, "the run must be killed before its end"
    subprocess.run(base + ["--out", str(killed), "--resume", "latest"], check=True, capture_output=True)
    subprocess.run(base + ["--out", str(clean)], check=True, capture_output=True)
    resumed, reference = _losses(killed), _losses(clean)
    assert sorted(resumed) == sorted(reference) == list(range(1, 31))
    for step in range(1, 31):
        assert resumed[step]["total"] == pytest.approx(reference[step]["total"], rel=1e-6, abs=1e-7), step
