"""Property test (issue 11): random messy source trees and index files never break a build.

Each example builds a tree with arbitrary-byte names, dangling and looping symlinks, an
unreadable folder, FIFOs, random / truncated / empty / tiny-image contents, plus a CelebA
index with duplicates, a BOM, CRLF and junk values, into an output folder that already
holds files of the user's. Checked: exit 0; everything the readers saw is a row or counted
as skipped (seen == rows + skipped, with ``seen`` known from the construction); unique keys;
``shards verify`` passes; a re-run skips every unit; the user's files are untouched.
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from denseface.cli import main
from denseface.shards.manifest import read_manifest
from denseface.shards.verify import verify_dataset

_name = st.binary(min_size=1, max_size=30).filter(lambda b: b"/" not in b and b"\0" not in b
                                                    and not b.startswith(b"."))
_ext = st.sampled_from([b".jpg", b".png", b".gif", b".JPEG", b".txt", b""])


def _tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 150, 120)).save(buf, "PNG")
    return buf.getvalue()


_content = st.one_of(st.binary(max_size=300), st.just(b""), st.just(_tiny_png()),
                     st.integers(8, 60).map(lambda n: _tiny_png()[:n]))
_entry = st.tuples(st.sampled_from(["file", "file", "file", "dangling", "loop", "fifo"]), _name, _ext, _content)
_tree = st.dictionaries(st.sampled_from([b"p1", b"p2", b"\xff\xfe", b"x y"]),
                        st.lists(_entry, max_size=6), max_size=3)
_index_line = st.one_of(
    st.builds(lambda i, ident: f"{i:06d}.jpg {ident}", st.integers(1, 4), st.integers(0, 99)),
    st.sampled_from(["000001.jpg 5", "000002.jpg \u00b2", "junk", "000003.jpg 1 2", "../x.jpg 3", ""]),
    st.text(max_size=20))


def _make_tree(root: Path, tree: dict[bytes, list], locked: bool, dir_loop: bool) -> int:
    """Writes the tree; returns how many entries a reader will see (rows + skipped)."""
    seen = 0
    base = os.fsencode(root)
    for folder, entries in tree.items():
        d = base + b"/" + folder
        os.makedirs(d, exist_ok=True)
        names = set()
        for kind, name, ext, content in entries:
            path = d + b"/" + name + ext
            if path in names or len(name + ext) > 255:
                continue
            names.add(path)
            seen += 1
            if kind == "file":
                with open(path, "wb") as fh:
                    fh.write(content)
            elif kind == "dangling":
                os.symlink(b"/nonexistent/" + name, path)
            elif kind == "loop":
                os.symlink(path, path)  # points at itself
            else:
                os.mkfifo(path)
    if dir_loop:
        os.makedirs(base + b"/p1", exist_ok=True)
        os.symlink(base, base + b"/p1/up")
        seen += 1
    if locked:
        os.makedirs(base + b"/locked/inner")
        with open(base + b"/locked/inner/a.jpg", "wb") as fh:
            fh.write(b"unseen")
        seen += 1  # the folder itself, counted as unreadable
    return seen


def _scandir_denying(real):
    def scandir(path):
        if Path(os.fsdecode(path)).name == "locked":
            raise PermissionError(13, "Permission denied")  # as an unreadable folder does (root ignores chmod)
        return real(path)
    return scandir


def _snapshot(root: Path) -> dict[str, bytes]:
    return {os.fsdecode(p): (p.read_bytes() if p.is_file() and not p.is_symlink() else b"")
            for p in root.rglob("*") if not p.is_fifo()}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(tree=_tree, locked=st.booleans(), dir_loop=st.booleans(), index=st.lists(_index_line, max_size=8),
       bom=st.booleans(), crlf=st.booleans(), shard_size=st.integers(1, 5))
def test_random_messy_sources_build_cleanly(tmp_path_factory, tree, locked, dir_loop, index, bom, crlf,
                                            shard_size):
    work = tmp_path_factory.mktemp("messy")
    folder = work / "folder"
    folder.mkdir()
    seen = _make_tree(folder, tree, locked, dir_loop)
    celeba = work / "celeba"
    (celeba / "img_align_celeba").mkdir(parents=True)
    for i in (1, 2):
        (celeba / "img_align_celeba" / f"{i:06d}.jpg").write_bytes(b"\xff\xd8\xff truncated")
    text = ("\r\n" if crlf else "\n").join(index)
    (celeba / "identity_CelebA.txt").write_bytes(("\ufeff" if bom else "").encode() + text.encode("utf-8"))
    # lines as the reader's text-mode file splits them (str.splitlines also breaks at \x85, \u2028)
    seen += sum(1 for line in io.StringIO(text, newline=None) if line.split())
    out = work / "out"
    users = {out / "mine.tmp-1-deadbeef": b"keep", out / "manifest" / "notes.txt": b"keep",
             out / "stats" / "x.json.tmp-7": b"keep"}
    for p, data in users.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    sources_before = _snapshot(work / "folder")
    argv = ["build-dataset", "--source", f"folder:{folder}", "--source", f"celeba:{celeba}",
            "--source", f"folder:{folder}", "--out", str(out), "--shard-size", str(shard_size),
            "--runner", "local", "--no-progress"]
    with mock.patch("os.scandir", _scandir_denying(os.scandir)):
        assert main(argv) == 0
        summary = json.loads((out / "run_summary.json").read_text())
        df = read_manifest(out) if summary["inputs"] else None
        assert summary["seen"] == seen == summary["inputs"] + sum(summary["skipped"].values())
        assert summary["balanced"] and (df is None or (df["key"].is_unique and len(df) == summary["inputs"]))
        report = verify_dataset(out)
        assert report.ok, report.problems
        assert main(argv) == 0
        again = json.loads((out / "run_summary.json").read_text())
        assert again["units_written"] == 0 and again["units_skipped"] == again["units_total"]
    assert {p: p.read_bytes() for p in users} == users
    assert _snapshot(work / "folder") == sources_before
    own = {"plan.json", "run_summary.json", ".denseface-build.lock"}
    for p in out.rglob("*"):
        rel = p.relative_to(out).as_posix()
        assert (rel in own or p.is_dir() or p in users or rel.startswith(("shard-", "manifest/shard-", "stats/shard-"))
                and ".tmp-" not in rel), rel
