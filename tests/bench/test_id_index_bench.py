"""Identity index build at the paper's scale: 2 M synthetic rows in 2,000 sidecars.

Run with ``make bench``. Each build runs in a fresh subprocess so that its peak memory
(``ru_maxrss``, minus the interpreter's after the imports) is its own. Baseline in the same
run: the index built from the tars themselves (json + id.npy members) at 20 k rows, against
the sidecars of the same 20 k rows.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from denseface.shards.id_sidecar import encode_arrays
from denseface.shards.schema import ID, JSON, encode_members
from denseface.shards.writer import atomic_write, write_tar

pytestmark = pytest.mark.bench
DIM = 128
PER_SHARD = 1000
PER_IDENTITY = 40  # CASIA-WebFace: ~494 k images of ~10.5 k people, ~47 each

MEASURE = """
import json, resource, sys, time
from denseface.train.identity_index import IdentityIndex
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
urls = json.loads(open(sys.argv[1]).read())
start = time.perf_counter()
index = IdentityIndex.build(urls)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
print(json.dumps({"rows": len(index), "identities": index.num_identities, "seconds": seconds, "peak_mb": peak / 1024}))
"""


def _members(key: str, ident: str, emb: np.ndarray) -> dict[str, bytes]:
    members = encode_members(np.zeros((8, 8, 3), np.uint8), {"key": key, "identity": ident}, {"id": emb})
    return {k: v for k, v in members.items() if k in (JSON, ID)}


def _write(root: Path, shards: int, tars: bool, rng: np.random.Generator) -> list[str]:
    """``shards`` x PER_SHARD rows as sidecars; with ``tars``, also the tars holding each row's
    json, id.npy and a 100 KB stand-in for the image members (what streaming a remote tar pays)."""
    urls = []
    filler = rng.bytes(100_000)
    for s in range(shards):
        rows = np.arange(s * PER_SHARD, (s + 1) * PER_SHARD)
        keys = np.array([f"k{n:08d}".encode() for n in rows])
        idents = np.array([f"person{n // PER_IDENTITY}".encode() for n in rows])
        emb = rng.standard_normal((PER_SHARD, DIM)).astype(np.float16)
        tar = root / f"shard-{s:06d}.tar"
        side = encode_arrays(keys, idents, emb)
        atomic_write(tar.with_name(tar.stem + ".ids.npz"), lambda fh: fh.write(side))
        if tars:
            samples = [(k.decode(), {**_members(k.decode(), i.decode(), e), "jpg": filler})
                       for k, i, e in zip(keys, idents, emb)]
            atomic_write(tar, lambda fh: write_tar(fh, samples))
        urls.append(str(tar))
    return urls


def _measure(urls: list[str], tmp: Path) -> dict:
    spec = tmp / "urls.json"
    spec.write_text(json.dumps(urls))
    out = subprocess.run([sys.executable, "-c", MEASURE, str(spec)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_identity_index_build_at_2m_rows(tmp_path):
    rng = np.random.default_rng(0)
    small = tmp_path / "small"
    small.mkdir()
    small_urls = _write(small, 20, tars=True, rng=rng)
    from_sidecars = _measure(small_urls, tmp_path)
    bare = tmp_path / "bare"
    bare.mkdir()
    for u in small_urls:
        Path(u).rename(bare / Path(u).name)  # the tars without their sidecars
    from_tars = _measure([str(bare / Path(u).name) for u in small_urls], tmp_path)
    big = tmp_path / "big"
    big.mkdir()
    big_urls = _write(big, 2000, tars=False, rng=rng)
    at_2m = _measure(big_urls, tmp_path)
    sidecar_bytes = sum(Path(u).with_name(Path(u).stem + ".ids.npz").stat().st_size for u in big_urls)
    assert at_2m["rows"] == 2_000_000 and from_tars["rows"] == from_sidecars["rows"] == 20_000
    print(f"\n20 k rows from tars (json + id.npy members, ~100 KB image stand-in each): "
          f"{from_tars['seconds']:.2f} s, peak +{from_tars['peak_mb']:.0f} MB")
    print(f"20 k rows from sidecars: {from_sidecars['seconds']:.2f} s, peak +{from_sidecars['peak_mb']:.0f} MB "
          f"(x {from_tars['seconds'] / from_sidecars['seconds']:.1f} faster)")
    print(f"2 M rows ({at_2m['identities']} identities, {DIM}-d) from 2000 sidecars "
          f"({sidecar_bytes / 2**20:.0f} MB): {at_2m['seconds']:.1f} s, peak +{at_2m['peak_mb']:.0f} MB")
