"""Per-shard identity sidecar: ``shard-XXXXXX.ids.npz`` beside ``shard-XXXXXX.tar``.

Why: the trainer's identity index needs only (key, identity, id embedding) of every sample.
Without the sidecar it reads every shard, and for remote shards (``pipe:``, ``s3://``) that
streams all image bytes (~500 GB for the paper's 2 M samples) before the first step; the
sidecar is ~0.3 KB a sample (128-d float16 + key + identity). It sits next to the tar under
the same name, so its URL follows from the shard's, whatever the scheme.

Format: an uncompressed ``.npz`` (entries dated 1980, so rebuilds give the same bytes) with
``keys`` (bytes, sorted like the tar), ``identities`` (UTF-8 bytes) and ``emb`` (float16, one
row per key). Read with ``zipfile`` + `decode_npy` so that reading in threads is safe.
"""
from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np

from denseface.shards.reader import local_path
from denseface.shards.schema import ID, JSON, decode_npy

SUFFIX = ".ids.npz"
FIELDS = ("keys", "identities", "emb")


def sidecar_url(shard_url: str) -> str:
    """``.../shard-000001.tar`` (also inside a ``pipe:`` command) -> ``.../shard-000001.ids.npz``."""
    head, sep, tail = shard_url.rpartition(".tar")
    if not sep:
        raise ValueError(f"not a .tar shard URL: {shard_url!r}")
    return head + SUFFIX + tail


def read_sidecar(shard_url: str) -> bytes | None:
    """The bytes of a shard's sidecar, local or remote; None where there is none (a dataset
    built before sidecars existed)."""
    side = sidecar_url(shard_url)
    path = local_path(side)
    if path is not None:
        return path.read_bytes() if path.is_file() else None
    import webdataset as wds

    try:
        with wds.gopen(side) as fh:
            return fh.read()
    except Exception:  # noqa: BLE001 - missing remote object: any scheme's error means "no sidecar"
        return None


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def encode_sidecar(samples: list[tuple[str, dict[str, bytes]]]) -> bytes | None:
    """The sidecar of a unit's samples (key, members); None when no sample has an embedding."""
    rows = []
    for key, members in sorted(samples):
        if ID in members and JSON in members:
            ident = str(json.loads(members[JSON].decode("utf-8"))["identity"])
            rows.append((key.encode(), ident.encode(), decode_npy(members[ID]).astype(np.float16).ravel()))
    if not rows:
        return None
    return encode_arrays(np.array([r[0] for r in rows]), np.array([r[1] for r in rows]), np.stack([r[2] for r in rows]))


def encode_arrays(keys: np.ndarray, identities: np.ndarray, emb: np.ndarray) -> bytes:
    """The sidecar of rows given as arrays (keys sorted; bytes; float16 embeddings)."""
    arrays = {"keys": keys, "identities": identities, "emb": emb.astype(np.float16)}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:  # fixed entry times: same inputs, same bytes
        for name in FIELDS:
            z.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), _npy(arrays[name]))
    return buf.getvalue()


def decode_sidecar(data: bytes) -> dict[str, Any]:
    """{keys, identities, emb} of a sidecar; ValueError when it is not one."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            out = {name: decode_npy(z.read(f"{name}.npy")) for name in FIELDS}
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"not an identity sidecar: {exc}") from None
    n = len(out["keys"])
    if len(out["identities"]) != n or out["emb"].ndim != 2 or len(out["emb"]) != n:
        raise ValueError("identity sidecar arrays disagree in length")
    return out
