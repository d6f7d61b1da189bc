"""Identity index: for a sample, the id embedding of ANOTHER image of the same person.

Why: the paper's identity condition comes from a reference image of the subject, not from
the target image itself (the reference code picks another sample of the same identity), so
the model cannot copy the target's own embedding. Only ``id.npy`` of that other image is
needed, so the index holds embeddings, not images.

How it scales: one pass reads each shard's identity sidecar (``shard-*.ids.npz``, written
by the build: keys, identities, embeddings, a few hundred bytes a sample; see
`denseface.shards.id_sidecar`); for a shard without one, only the ``json`` and ``id.npy``
members (local tars are read with seeks over the images, remote ones are streamed through
webdataset's ``gopen``). The result is cached once per dataset as plain ``.npy`` files
that are memory-mapped: 2 M images x 128-d float16 is 512 MB of ``emb.npy`` plus ~100 MB of
keys, shared through the page cache by every DataLoader worker and never copied into them.
The identity of a key comes from its json (the same value as the manifest's ``identity``
column; shards hold only ``status == "ok"`` rows), so remote datasets without a readable
manifest work the same way. The cache folder name is a fingerprint of the shard list (and,
for local files, their sizes and mtimes), so a rebuilt dataset gets a new index.

Files: ``keys.npy`` (sorted bytes), ``group.npy`` (identity number per key row),
``order.npy`` (key rows grouped by identity), ``starts.npy`` (group g = order[starts[g]:
starts[g+1]]), ``emb.npy`` (float16, one row per key), ``meta.json``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from denseface.paths import cache_dir
from denseface.shards.id_sidecar import decode_sidecar, read_sidecar
from denseface.shards.reader import iter_members, local_path
from denseface.shards.schema import ID, JSON, decode_npy

INDEX_VERSION = 1
FILES = ("keys", "group", "order", "starts", "emb")


def fingerprint(urls: Sequence[str]) -> str:
    """Changes when the shard list, or a local shard's size or mtime, changes."""
    h = hashlib.sha1(f"id-index-v{INDEX_VERSION}".encode())
    for url in sorted(urls):
        h.update(url.encode())
        p = local_path(url)
        if p is not None and p.exists():
            st = p.stat()
            h.update(f":{st.st_size}:{st.st_mtime_ns}".encode())
        h.update(b"\n")
    return h.hexdigest()[:20]


Part = tuple[np.ndarray, np.ndarray, np.ndarray]  # one shard's keys (bytes), identities (bytes), float16 embeddings


def _collect(members: Iterable[tuple[str, str, bytes]]) -> Part:
    """(key, ext, bytes) of json and id.npy members -> one shard's arrays."""
    ident: dict[str, str] = {}
    emb: dict[str, np.ndarray] = {}
    for key, ext, data in members:
        if ext == JSON:
            ident[key] = str(json.loads(data.decode("utf-8"))["identity"])
        elif ext == ID:
            emb[key] = decode_npy(data).astype(np.float16).ravel()
    keys = sorted(k for k in emb if k in ident)
    if not keys:
        return np.array([], "S1"), np.array([], "S1"), np.zeros((0, 0), np.float16)
    return (np.array([k.encode() for k in keys]), np.array([ident[k].encode() for k in keys]),
            np.stack([emb[k] for k in keys]))


def _json_and_id(url: str) -> Iterable[tuple[str, str, bytes]]:
    """The json and id.npy members of a shard (a local tar's images are seeked over)."""
    for key, ext, data in iter_members(url, read=lambda key, ext: ext in (JSON, ID)):
        if data is not None:
            yield key, ext, data


def identity_backend(urls: Sequence[str]) -> str | None:
    """The identity backend named in the first sample json of the first shard (the build's
    identity stage decides it for the whole dataset), None when it names none."""
    for _, ext, data in _json_and_id(urls[0]):
        if ext == JSON:
            return json.loads(data.decode("utf-8")).get("id_backend")
    return None


def read_shard(url: str) -> Part:
    """One shard's (keys, identities, embeddings): from its sidecar when present (a few KB),
    else from the tar's json and id.npy members (a remote tar is streamed whole)."""
    data = read_sidecar(url)
    if data:
        s = decode_sidecar(data)
        return s["keys"], s["identities"], s["emb"]
    return _collect(_json_and_id(url))


class IdentityIndex:
    """Memory-mapped key -> identity group -> embeddings (module docstring)."""

    def __init__(self, arrays: dict[str, np.ndarray], path: Path | None = None) -> None:
        self.path = path
        self._arrays = arrays

    # pickled into DataLoader workers as a path (re-opened there, memory-mapped), not as data
    def __getstate__(self) -> dict:
        return {"path": self.path, "_arrays": None if self.path is not None else self._arrays}

    def __setstate__(self, state: dict) -> None:
        self.path, self._arrays = state["path"], state["_arrays"]

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = _load_arrays(self.path)
        return self._arrays

    def __len__(self) -> int:
        return len(self.arrays["keys"])

    @property
    def dim(self) -> int:
        return int(self.arrays["emb"].shape[1])

    @property
    def num_identities(self) -> int:
        return len(self.arrays["starts"]) - 1

    def row(self, key: str) -> int | None:
        keys = self.arrays["keys"]
        k = key.encode()
        r = int(np.searchsorted(keys, k))
        return r if r < len(keys) and keys[r] == k else None

    def key(self, row: int) -> str:
        return self.arrays["keys"][row].decode()

    def embedding(self, row: int) -> np.ndarray:
        return np.asarray(self.arrays["emb"][row], dtype=np.float32)

    def reference(self, key: str, rng: np.random.Generator) -> tuple[str, np.ndarray] | None:
        """(reference key, float32 embedding): a uniformly chosen other image of the same
        identity, the image itself when it is its identity's only one; None for an unknown key."""
        a = self.arrays
        r = self.row(key)
        if r is None:
            return None
        g = int(a["group"][r])
        s, e = int(a["starts"][g]), int(a["starts"][g + 1])
        ref = r
        if e - s > 1:
            ref = int(a["order"][s + int(rng.integers(e - s - 1))])
            if ref == r:  # r is not the group's last row here, so the last row is another image
                ref = int(a["order"][e - 1])
        return self.key(ref), self.embedding(ref)

    # ---- building and caching ---------------------------------------------------------------
    @classmethod
    def build(cls, urls: Sequence[str], threads: int = 8) -> "IdentityIndex":
        """One pass over the shards' sidecars (or their json + id.npy members), in threads."""
        with ThreadPoolExecutor(max(1, min(threads, len(urls)))) as pool:
            parts = [p for p in pool.map(read_shard, list(urls)) if len(p[0])]
        if not parts:
            raise ValueError(f"no sample with both json and {ID} in {len(urls)} shard(s) "
                             f"(first: {urls[0] if urls else None}); the identity stage must have run")
        dims = {p[2].shape[1] for p in parts}
        if len(dims) != 1:
            raise ValueError(f"identity embeddings of different sizes {sorted(dims)} in one dataset")
        keys, idents, emb = (np.concatenate([p[i] for p in parts]) for i in range(3))
        del parts  # at 2 M rows every copy of the embeddings is 512 MB: hold at most two
        order = np.argsort(keys, kind="stable")
        keys_arr = keys[order]
        if (keys_arr[1:] == keys_arr[:-1]).any():
            raise ValueError("duplicate sample keys across shards")
        names, group = np.unique(idents[order], return_inverse=True)
        group = group.astype(np.int32)
        by_group = np.argsort(group, kind="stable").astype(np.int32)  # rows of a group in key order
        starts = np.searchsorted(group[by_group], np.arange(len(names) + 1)).astype(np.int64)
        emb = emb.astype(np.float16, copy=False)[order]
        return cls({"keys": keys_arr, "group": group, "order": by_group, "starts": starts, "emb": emb})

    def save(self, path: Path) -> Path:
        """Write the arrays into a temporary folder and rename it into place (atomic)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            for name in FILES:
                np.save(tmp / f"{name}.npy", self.arrays[name], allow_pickle=False)
            (tmp / "meta.json").write_text(json.dumps(
                {"version": INDEX_VERSION, "n": len(self), "dim": self.dim, "identities": self.num_identities}))
            try:
                os.replace(tmp, path)
            except OSError:  # another process got there first: keep its copy
                if not (path / "meta.json").exists():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.path = path
        return path

    @classmethod
    def load(cls, path: Path) -> "IdentityIndex":
        return cls(_load_arrays(Path(path)), Path(path))

    @classmethod
    def load_or_build(cls, urls: Sequence[str], cache: Path | None = None) -> "IdentityIndex":
        """The cached index of these shards, built (and cached) on first use.

        ``cache``: the index folder; default ``<dense-face cache>/id-index/<fingerprint>``.
        """
        path = Path(cache) if cache is not None else cache_dir() / "id-index" / fingerprint(urls)
        if (path / "meta.json").exists():
            return cls.load(path)
        index = cls.build(urls)
        index.save(path)
        return cls.load(path)


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("version") != INDEX_VERSION:
        raise ValueError(f"identity index {path} has version {meta.get('version')}, "
                         f"expected {INDEX_VERSION}; delete it")
    return {name: np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in FILES}
