"""Costs of the issue-11 safeguards, each against a baseline measured in the same run.

* shard checksums: the same build with and without SHA-256 of each tar and manifest, the
  no-op re-run (resume check) with and without re-hashing, and the hash rate per GB;
* decode memory: peak RSS of one worker process decoding one batch of eight 7700 x 7700
  images (PNG and JPEG), with the default ``max_decode_side`` and with no bound.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from denseface.config import BuildConfig
from denseface.etl.build import build_dataset
from denseface.etl.readers import read_casia
from denseface.shards import writer
from denseface.shards.verify import check_unit

pytestmark = pytest.mark.bench
COPIES = 6


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def test_checksum_cost(tmp_path, sample_casia, monkeypatch):
    src = tmp_path / "src"
    for i in range(COPIES):
        for r in read_casia(sample_casia):
            if r.skip or r.identity == "group_photo":
                continue
            dst = src / f"{r.identity}_{i}" / Path(r.source_path).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(r.source_path, dst)

    def build(out: str) -> float:
        cfg = BuildConfig(sources=[f"casia:{src}"], out=tmp_path / out, runner="local", workers=1, shard_size=8)
        return _timed(lambda: build_dataset(cfg, progress=False))

    build("warm")  # models loaded and files cached outside the clock
    with_sums = build("with")
    with monkeypatch.context() as m:
        m.setattr(writer, "file_sha256", lambda path: "")
        without = build("without")
    units = sorted((tmp_path / "with" / "stats").glob("*.json"))
    deep = _timed(lambda: [check_unit(tmp_path / "with", i, checksums=True) for i in range(len(units))])
    quick = _timed(lambda: [check_unit(tmp_path / "with", i, checksums=False) for i in range(len(units))])
    mb = sum(p.stat().st_size for p in (tmp_path / "with").glob("shard-*.tar")) / 2**20
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(256 * 2**20))
    s_per_gb = _timed(lambda: writer.file_sha256(blob)) * 4
    print(f"\nbuild of {len(units)} units ({mb:.1f} MB of tars): with checksums {with_sums:.2f} s, without "
          f"{without:.2f} s, ratio {with_sums / without:.3f}")
    print(f"resume/verify check of every unit: with checksums {deep * 1000:.1f} ms, without {quick * 1000:.1f} ms")
    print(f"SHA-256 of a 256 MB file (page cache): {s_per_gb:.2f} s per GB")


_PEAK = """
import json, sys
from denseface.annotators.base import Item
from denseface.annotators.decode import Decode
from denseface.config import BuildConfig

def status_mb(field):
    line = next(ln for ln in open("/proc/self/status") if ln.startswith(field + ":"))
    return int(line.split()[1]) / 1024

paths, side = sys.argv[1:-1], int(sys.argv[-1])
stage = Decode(BuildConfig(max_decode_side=side, max_pixels=100_000_000))
items = [Item(key=str(i), identity="x", source="b", source_path=p, unit=0) for i, p in enumerate(paths)]
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # resets the peak (VmHWM) to the current RSS: the imports' own peak is not counted
before = status_mb("VmRSS")
stage.process(items)
assert all(it.ok for it in items), [it.reason for it in items]
print(json.dumps({"before_mb": before, "peak_mb": status_mb("VmHWM"), "shape": list(items[0].image.shape)}))
"""


def test_decode_memory_peak_per_worker(tmp_path):
    big = Image.new("RGB", (7700, 7700), (180, 140, 120))
    for i in range(8):
        big.save(tmp_path / f"{i}.png")
        big.save(tmp_path / f"{i}.jpg", quality=90)
    del big
    for ext in ("png", "jpg"):
        paths = [str(tmp_path / f"{i}.{ext}") for i in range(8)]
        kb = sum(os.path.getsize(p) for p in paths) / 8 / 1024
        runs = {}
        for side in (BuildConfig().max_decode_side, 100_000):
            out = subprocess.run([sys.executable, "-c", _PEAK, *paths, str(side)], check=True, capture_output=True,
                                 text=True).stdout
            runs[side] = json.loads(out.strip().splitlines()[-1])
        (bounded, b), (_, u) = runs.items()
        print(f"\n8 x 7700x7700 {ext.upper()} ({kb:.0f} KB each), one batch in one worker: peak RSS "
              f"{b['peak_mb']:.0f} MB (+{b['peak_mb'] - b['before_mb']:.0f} over the imports) with "
              f"max_decode_side={bounded} (images {b['shape']}), {u['peak_mb']:.0f} MB "
              f"(+{u['peak_mb'] - u['before_mb']:.0f}) unbounded (images {u['shape']}); "
              f"ratio {(b['peak_mb'] - b['before_mb']) / (u['peak_mb'] - u['before_mb']):.3f}")
