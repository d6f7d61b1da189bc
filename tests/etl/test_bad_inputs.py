"""Messy real inputs (issue 11): one bad file never stops a build, nothing is dropped
silently (``seen == rows + skipped``), nothing outside the build's own files is touched."""
from __future__ import annotations

import json
import os
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from denseface.cli import main
from denseface.config import BuildConfig
from denseface.errors import OutputBusy, OutputError
from denseface.etl import build as build_mod
from denseface.etl.build import build_dataset
from denseface.etl.lock import LOCK_NAME, output_lock
from denseface.etl.readers import read_celeba, read_release
from denseface.etl.sample_data import sample_photo
from denseface.shards.manifest import read_manifest
from denseface.shards.schema import MAX_KEY_LEN
from denseface.shards.verify import verify_dataset


def _cfg(out, *sources, **kw):
    return BuildConfig(sources=list(sources), out=out, runner="local", workers=1, **kw)


def _junk(p: Path, data: bytes = b"not an image") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def _summary(out: Path) -> dict:
    return json.loads((out / "run_summary.json").read_text())


def _assert_sound(out: Path, result) -> pd.DataFrame:
    """Balanced counts, unique keys, a clean verify, and a re-run that skips every unit."""
    df = read_manifest(out)
    assert result.balanced and df["key"].is_unique and len(df) == result.inputs
    assert verify_dataset(out).ok, verify_dataset(out).problems
    return df


# ---- names, keys, symlinks, odd entries -------------------------------------------------------

def test_non_utf8_names_and_overlong_keys_become_rows(tmp_path):
    root = tmp_path / "src"
    ident = os.fsencode(root) + b"/caf\xe9-\xff"
    os.makedirs(ident)
    shutil.copy(sample_photo("obama"), os.fsdecode(ident + b"/ph\xf6to.jpg"))
    _junk(root / "x" / ("n" * 200 + ".jpg"), sample_photo("obama").read_bytes())  # accepted: a long key
    out = tmp_path / "out"
    result = build_dataset(_cfg(out, f"casia:{root}"), progress=False)
    df = _assert_sound(out, result)
    assert result.accepted == 2, df[["key", "reason"]]
    assert all(len(k) <= MAX_KEY_LEN for k in df["key"])
    odd = df[df.identity.str.contains("caf")].iloc[0]
    assert odd.identity == "caf\\xe9-\\xff" and odd.source_path.endswith("ph\\xf6to.jpg")
    names = tarfile.open(out / "shard-000000.tar").getnames()
    assert all(len(n) <= 100 for n in names)


def test_symlinks_unreadable_folders_and_gifs_are_rows_or_counted(tmp_path, monkeypatch):
    root = tmp_path / "src"
    _junk(root / "a" / "x.jpg")
    (root / "a" / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    (root / "a" / "loop1.jpg").symlink_to(root / "a" / "loop2.jpg")
    (root / "a" / "loop2.jpg").symlink_to(root / "a" / "loop1.jpg")
    (root / "a" / "back").symlink_to(root)  # a folder loop
    os.mkfifo(root / "a" / "pipe.jpg")
    (root / "locked").mkdir()
    _junk(root / "locked" / "hidden_by_permissions.jpg")
    frames = [Image.new("RGB", (64, 64), (i * 60, 0, 0)) for i in range(3)]
    frames[0].save(root / "a" / "anim.gif", save_all=True, append_images=frames[1:])
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                        if Path(p).name == "locked" else real_scandir(p))  # works as root too
    out = tmp_path / "out"
    result = build_dataset(_cfg(out, f"folder:{root}"), progress=False)
    df = _assert_sound(out, result).set_index("key")
    reasons = dict(zip(df.source_path.map(lambda s: Path(s).name), df.reason))
    assert reasons["dangling.jpg"] == "file: dangling symlink"
    assert reasons["loop1.jpg"] == reasons["loop2.jpg"] == "file: symlink loop"
    assert reasons["pipe.jpg"] == "file: not a regular file"
    assert "animated" in reasons["anim.gif"]
    assert result.skipped == {"folder: folder reached twice (symlink loop), not read again": 1,
                              "folder: unreadable folder: Permission denied": 1}
    summary = _summary(out)
    assert summary["seen"] == summary["inputs"] + sum(summary["skipped"].values()) == 8


def test_casia_unreadable_identity_folder_is_counted(tmp_path, monkeypatch):
    root = tmp_path / "casia"
    _junk(root / "0001" / "a.jpg")
    _junk(root / "0002" / "b.jpg")
    _junk(root / "stray.jpg")
    real_scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda p: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
                        if Path(p).name == "0002" else real_scandir(p))
    out = tmp_path / "out"
    result = build_dataset(_cfg(out, f"casia:{root}"), progress=False)
    _assert_sound(out, result)
    assert result.inputs == 1 and result.skipped == {"casia: image outside an identity folder": 1,
                                                     "casia: unreadable folder: Permission denied": 1}


# ---- index files -----------------------------------------------------------------------------

def _celeba(root: Path, identity: str, attrs: str = "", bbox: str = "") -> Path:
    for name in ("000001.jpg", "000002.jpg", "000003.jpg"):
        _junk(root / "img_align_celeba" / name)
    (root / "identity_CelebA.txt").write_bytes(identity.encode("utf-8"))
    if attrs:
        (root / "list_attr_celeba.txt").write_bytes(attrs.encode("utf-8"))
    if bbox:
        (root / "list_bbox_celeba.txt").write_bytes(bbox.encode("utf-8"))
    return root


def test_celeba_bom_crlf_duplicates_junk_values_and_unicode_digits(tmp_path):
    root = _celeba(tmp_path / "celeba",
                   "\ufeff000001.jpg 12\r\n000002.jpg 7\r\n000001.jpg 12\r\n000003.jpg \u00b2\r\n000003.jpg \u0663\r\n",
                   attrs="3\nSmiling Male\n000001.jpg 1 -1\n000002.jpg x 1\n",
                   bbox="3\nimage_id x_1 y_1 width height\n000001.jpg 1 2 3 4\n000002.jpg \u00b2 1 2 3\n")
    recs = list(read_celeba(root))
    rows = [r for r in recs if not r.skip]
    good = [r for r in rows if not r.error]
    assert [(Path(r.source_path).name, r.identity) for r in good] == [("000001.jpg", "12"), ("000002.jpg", "7")]
    assert good[0].attrs == {"attributes": {"Smiling": True, "Male": False}, "source_bbox_xywh": [1, 2, 3, 4]}
    assert good[1].attrs == {}  # its junk attribute and bbox values add nothing ...
    assert sorted(r.skip for r in recs if r.skip) == ["celeba: junk line in list_attr_celeba.txt",
                                                      "celeba: junk line in list_bbox_celeba.txt"]  # ... and count
    errors = [r.error for r in rows if r.error]
    assert errors[0].startswith("index: duplicate identity line 3") and len(errors) == 3
    assert all("malformed" in e for e in errors[1:])  # '²' and '٣' are not ids


def test_same_source_twice_and_duplicate_lines_give_unique_keys_and_clean_reruns(tmp_path):
    root = _celeba(tmp_path / "celeba", "000001.jpg 1\n000002.jpg 2\n000001.jpg 1\n")
    out = tmp_path / "out"
    cfg = _cfg(out, f"celeba:{root}", f"celeba:{root}/", shard_size=2)
    first = build_dataset(cfg, progress=False)
    df = _assert_sound(out, first)
    assert first.inputs == 3 and (df.reason.str.contains("duplicate identity line")).sum() == 1
    again = build_dataset(cfg, progress=False)
    assert again.units_written == 0 and again.units_skipped == again.units_total


def test_release_csv_pathological_cells_become_rows(tmp_path):
    root = tmp_path / "release"
    root.mkdir()
    row = ["images/1/a.jpg", "", "", "l.csv", "m.png", "", "", "", "", "[0,0,1,1]", "1", "", "", "", "cap",
           "['1', '2', '3']"]
    deep = list(row)
    deep[0], deep[-1] = "images/1/deep.jpg", "[" * 5000 + "]" * 5000
    huge = list(row)
    huge[0], huge[-2] = "images/1/b.jpg", "x" * 200_000  # over the csv module's field limit
    later = list(row)
    later[0] = "images/1/c.jpg"
    arabic = list(row)
    arabic[0], arabic[10] = "images/1/d.jpg", "\u0663"
    text = "\ufeffheader\n" + "\n".join(",".join(f'"{c}"' for c in r) for r in (row, deep, huge, later, arabic, row))
    (root / "casiaFacesDataset256_x_headpose.csv").write_text(text + "\n", encoding="utf-8")
    recs = list(read_release(root))
    assert [Path(r.source_path).name for r in recs if not r.error] == ["a.jpg", "c.jpg"]
    errors = [r.error for r in recs if r.error]
    assert len(errors) == 4 and "pose cell of" in errors[0] and "field larger than field limit" in errors[1]
    assert "subject id" in errors[2] and "duplicate of line 2" in errors[3]


# ---- the output folder -----------------------------------------------------------------------

def test_only_the_builds_own_temporaries_are_removed(tmp_path):
    src = tmp_path / "src"
    _junk(src / "p" / "a.jpg")
    out = tmp_path / "out"
    mine = {out / "notes.tmp-keep.txt": b"user", out / "manifest" / "x.parquet.tmp-1-deadbeef": b"user",
            out / "deep" / "shard-000000.tar.tmp-1-deadbeef": b"user"}
    for p, data in mine.items():
        _junk(p, data)
    stale = [_junk(out / "stats" / "shard-000007.json.tmp-42-0badcafe", b"half"),
             _junk(out / "shard-000003.ids.npz.tmp-42-0badcafe", b"half")]
    build_dataset(_cfg(out, f"casia:{src}"), progress=False)
    assert not any(p.exists() for p in stale)
    assert {p: p.read_bytes() for p in mine} == mine


def test_second_build_refuses_and_stale_lock_is_taken_over(tmp_path, capsys):
    src = tmp_path / "src"
    _junk(src / "p" / "a.jpg")
    out = tmp_path / "out"
    out.mkdir()
    held, release = threading.Event(), threading.Event()

    def hold():
        with output_lock(out):
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    try:
        with pytest.raises(OutputBusy, match=f"in use by another build \\(pid {os.getpid()} on "):
            build_dataset(_cfg(out, f"casia:{src}", shard_size=7), progress=False)
        assert not (out / "plan.json").exists()
        assert main(["build-dataset", "--source", f"casia:{src}", "--out", str(out), "--runner", "local",
                     "--no-progress"]) == 4
        assert capsys.readouterr().err.startswith("error: output folder")
    finally:
        release.set()
        t.join()
    (out / LOCK_NAME).write_text("pid 999999 on elsewhere, since 2020-01-01")  # a killed build's lock
    assert build_dataset(_cfg(out, f"casia:{src}"), progress=False).balanced
    assert "took over the lock of a build that is no longer running (pid 999999" in capsys.readouterr().err


def test_changed_bytes_fail_verify_and_are_rebuilt(tmp_path):
    src = tmp_path / "src"
    for i in range(4):
        _junk(src / "p" / f"{i}.jpg")
    shutil.copy(sample_photo("obama"), src / "p" / "face.jpg")
    out = tmp_path / "out"
    cfg = _cfg(out, f"casia:{src}", shard_size=5)
    build_dataset(cfg, progress=False)
    tar = out / "shard-000000.tar"
    good = tar.read_bytes()
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    tar.write_bytes(bytes(flipped))  # same size
    report = verify_dataset(out)
    assert report.problems["shard-000000"] == ["tar content changed since it was written (SHA-256 mismatch)"]
    assert verify_dataset(out, checksums=False).ok  # what the quick check cannot see
    assert build_dataset(cfg, progress=False).units_written == 1
    assert tar.read_bytes() == good


def test_rebuild_with_another_shard_size_leaves_no_stale_units(tmp_path, capsys):
    src = tmp_path / "src"
    for i in range(6):
        _junk(src / "p" / f"{i}.jpg")
    out = tmp_path / "out"
    build_dataset(_cfg(out, f"casia:{src}", shard_size=2), progress=False)
    (out / "plan.json").write_text("{not json")
    assert verify_dataset(out).problems["plan.json"][0].startswith("unreadable (JSONDecodeError")
    (out / "stats" / "shard-000002.json").write_text("{}")  # a unit the next plan does not have
    result = build_dataset(_cfg(out, f"casia:{src}", shard_size=5), progress=False)
    assert "removed 1 unit(s) beyond this plan's 2" in capsys.readouterr().err
    assert sorted(p.name for p in out.glob("shard-*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    df = _assert_sound(out, result)
    assert len(df) == 6
    _junk(out / "stats" / "shard-000009.json", b"{}")
    assert "not in the plan" in verify_dataset(out).problems["shard-000009"][0]


def test_read_only_finished_dataset_is_used_without_writes(tmp_path, monkeypatch, capsys):
    src = tmp_path / "src"
    _junk(src / "p" / "a.jpg")
    out = tmp_path / "out"
    cfg = _cfg(out, f"casia:{src}")
    build_dataset(cfg, progress=False)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    real_access = os.access
    monkeypatch.setattr(build_mod.os, "access", lambda p, mode: False if Path(p) == out else real_access(p, mode))
    result = build_dataset(cfg, progress=False)
    assert result.units_written == 0 and result.balanced
    assert "read-only and complete: nothing written" in capsys.readouterr().err
    assert verify_dataset(out).ok and len(read_manifest(out)) == 1
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()} == before
    _junk(src / "p" / "b.jpg")  # now there is work to do: a clear error, not a traceback
    with pytest.raises(OutputError, match="not writable and 1 of 1 unit"):
        build_dataset(cfg, progress=False)


# ---- the command line ------------------------------------------------------------------------

def test_user_errors_are_one_line_with_exit_codes(tmp_path, capsys, monkeypatch):
    def run(*argv):
        code = main(list(argv))
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return code, [ln for ln in err.splitlines() if ln.startswith("error:")]

    code, err = run("build-dataset", "--source", f"casia:{tmp_path}/missing", "--out", str(tmp_path / "o"))
    assert code == 2 and len(err) == 1 and err[0].startswith("error: CASIA-WebFace source folder not found")
    code, err = run("build-dataset", "--source", "flickr:/x", "--out", str(tmp_path / "o"))
    assert code == 2 and err[0].startswith("error: unknown source kind")
    code, err = run("build-dataset", "--source", f"casia:{tmp_path}", "--out", str(tmp_path / "o"),
                    "--config", str(tmp_path / "nope.yaml"))
    assert code == 2 and err == [f"error: config {tmp_path / 'nope.yaml'} not found: give a YAML file or a "
                                 "preset name (default, paper)"]
    code, err = run("train", "--data", str(tmp_path / "nodata"), "--out", str(tmp_path / "run"))
    assert code == 2 and err == [f"error: training data not found: {tmp_path / 'nodata'}"]
    code, err = run("shards", "verify", str(tmp_path / "nothing"))
    assert code == 2 and err[0].startswith("error: dataset folder not found")
    src = tmp_path / "src"
    _junk(src / "p" / "a.jpg")
    (tmp_path / "file").write_text("x")
    code, err = run("build-dataset", "--source", f"casia:{src}", "--out", str(tmp_path / "file" / "o"),
                    "--runner", "local", "--no-progress")
    assert code == 3 and err[0].startswith("error: cannot write")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("denseface.shards.writer.os.fsync", full_disk)
    code, err = run("build-dataset", "--source", f"casia:{src}", "--out", str(tmp_path / "full"), "--runner",
                    "local", "--no-progress")
    assert code == 3 and err[0].startswith("error: cannot write") and err[0].endswith("No space left on device")
    assert not [p for p in (tmp_path / "full").rglob("*") if ".tmp-" in p.name]  # nothing half-written left
    with pytest.raises(OutputError, match="No space"):  # --debug: the exception itself, with its traceback
        main(["--debug", "build-dataset", "--source", f"casia:{src}", "--out", str(tmp_path / "full"),
              "--runner", "local", "--no-progress"])


# ---- decode frame and memory -----------------------------------------------------------------

def test_exif_rotated_and_downscaled_photos_record_the_source_frame(tmp_path):
    face = Image.open(sample_photo("obama")).convert("RGB")
    src = tmp_path / "src" / "p"
    src.mkdir(parents=True)
    face.save(src / "plain.jpg", quality=95)
    stored = face.transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back upright
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(src / "rotated.jpg", quality=95, exif=exif)
    big = face.resize((face.width * 3, face.height * 3), Image.Resampling.LANCZOS)
    big.save(src / "big.png")
    out = tmp_path / "out"
    build_dataset(_cfg(out, f"casia:{src.parent}", max_decode_side=max(face.size) + 8), progress=False)
    df = read_manifest(out).set_index("key")
    plain, rotated, large = df.loc["p-plain"], df.loc["p-rotated"], df.loc["p-big"]
    assert (plain.status, rotated.status, large.status) == ("ok", "ok", "ok")
    assert (rotated.src_width, rotated.src_height, rotated.src_orientation) == (face.width, face.height, 6)
    assert rotated.bbox[2] <= rotated.src_width + 1 and rotated.bbox[3] <= rotated.src_height + 1
    np.testing.assert_allclose(rotated.bbox, plain.bbox, atol=4)
    assert (large.src_width, large.src_height) == (face.width * 3, face.height * 3)
    assert large.decode_scale == pytest.approx(1 / 3, rel=0.01)
    np.testing.assert_allclose(np.array(large.bbox) / 3, plain.bbox, atol=4)  # source pixels of the big image
    m_plain = np.array(plain.crop_transform).reshape(2, 3)
    m_large = np.array(large.crop_transform).reshape(2, 3)
    np.testing.assert_allclose(m_large[:, :2] * 3, m_plain[:, :2], rtol=0.03, atol=0.02)
