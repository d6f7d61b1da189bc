"""The ONE sample schema: tar members, their codecs, and the Parquet manifest columns.

The ETL writer and the trainer reader both import this module, so a member name or an
encoding changes in one place. DESIGN.md §4 describes the contents.
"""
from __future__ import annotations

import io
import json
import re
import threading
from typing import Any

import cv2
import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 1


class Status:
    """Manifest status of one input: every input gets exactly one row with one of these."""

    OK = "ok"
    REJECTED = "rejected"  # the input cannot become a sample (corrupt, no face, ...)
    ERROR = "error"  # something failed that should not have (bug, transient fault)
    ALL = (OK, REJECTED, ERROR)


# Tar member extensions, per key.
JPG, JSON, LMK, DEPTH, MASK, ID, LATENT = "jpg", "json", "lmk.npy", "depth.png", "mask.png", "id.npy", "latent.npy"
REQUIRED_MEMBERS = (JPG, JSON, LMK, DEPTH, MASK, ID)  # what every accepted image has
NUM_LANDMARKS = 478
# Array name on the in-flight item -> tar member holding it.
ARRAY_MEMBERS = {"lmk": LMK, "depth": DEPTH, "mask": MASK, "id": ID, "latent": LATENT}

_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
# A ustar header holds a 100-byte name (the prefix field is only used at a '/', and keys
# have none): "<key>.<longest member>" must fit.
MAX_KEY_LEN = 100 - 1 - max(len(m) for m in (JPG, JSON, *ARRAY_MEMBERS.values()))


def printable(text: str) -> str:
    """A name as UTF-8 text: bytes that are not UTF-8 (kept by the OS as surrogates) are
    shown as ``\\xNN``, so manifests, JSON and hashes never fail on odd file names."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_safe_key(key: str) -> bool:
    """Keys become tar member names: no dots (webdataset splits on them), slashes or '..',
    and short enough for a tar header."""
    return bool(_KEY_RE.match(key)) and len(key) <= MAX_KEY_LEN


# ---- member codecs ---------------------------------------------------------------

def encode_jpg(rgb: np.ndarray, quality: int = 95) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpg(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a decodable JPEG")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr.astype(np.float16)), allow_pickle=False)
    return buf.getvalue()


# Why not plain np.load: numpy parses every .npy header with ast.literal_eval, and CPython
# 3.11's ast is not thread-safe (python/cpython#106905: "AST constructor recursion depth
# mismatch" when the interpreter switches threads mid-parse). The trainer's identity index
# and other thread pools decode id.npy / lmk.npy members and the sidecars' byte-string keys, so
# the headers np.save writes for plain C-order numeric and string arrays are parsed here without
# ast; anything else goes to np.load under a lock.
_NPY_MAGIC = b"\x93NUMPY"
_NPY_HEADER = re.compile(
    r"\{'descr': '([<>|=]?(?:[biuf]\d{1,2}|[SU]\d{1,6}))', 'fortran_order': False, "
    r"'shape': \(((?:\d+, ?)*\d*)\), *\} *\n?$")
_NP_LOAD_LOCK = threading.Lock()


def _parse_npy_header(data: bytes) -> tuple[np.dtype, tuple[int, ...], int] | None:
    """(dtype, shape, data offset) of a simple .npy header, or None when it is not one."""
    if len(data) < 10 or data[:6] != _NPY_MAGIC or data[6] not in (1, 2, 3) or data[7] != 0:
        return None
    if data[6] == 1:
        size, start = int.from_bytes(data[8:10], "little"), 10
    else:
        size, start = int.from_bytes(data[8:12], "little"), 12
    header = data[start:start + size]
    if len(header) != size:
        return None
    m = _NPY_HEADER.match(header.decode("latin1"))
    if m is None:
        return None
    shape = tuple(int(d) for d in m.group(2).replace(" ", "").split(",") if d)
    return np.dtype(m.group(1)), shape, start + size


def decode_npy(data: bytes) -> np.ndarray:
    """Thread-safe np.load of one .npy member (see above); returns a writable array."""
    parsed = _parse_npy_header(data)
    if parsed is None:
        with _NP_LOAD_LOCK:
            return np.load(io.BytesIO(data), allow_pickle=False)
    dtype, shape, offset = parsed
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - offset != count * dtype.itemsize:
        raise ValueError(f".npy member holds {len(data) - offset} data bytes, "
                         f"{count * dtype.itemsize} expected for {dtype.str} {shape}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape).copy()


def encode_depth(depth: np.ndarray) -> bytes:
    """float depth in [0,1] (0 = background) -> 16-bit PNG."""
    if depth.ndim != 2:
        raise ValueError(f"depth must be 2-D, got {depth.shape}")
    q = np.round(np.clip(depth, 0.0, 1.0) * 65535.0).astype(np.uint16)
    ok, buf = cv2.imencode(".png", q)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_depth(data: bytes) -> np.ndarray:
    q = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if q is None or q.dtype != np.uint16 or q.ndim != 2:
        raise ValueError("depth member is not a 16-bit single-channel PNG")
    return q.astype(np.float32) / 65535.0


def encode_mask(mask: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", mask.astype(np.uint8))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_mask(data: bytes) -> np.ndarray:
    m = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if m is None or m.ndim != 2:
        raise ValueError("mask member is not a single-channel PNG")
    return m


ENCODERS = {LMK: encode_npy, ID: encode_npy, LATENT: encode_npy, DEPTH: encode_depth, MASK: encode_mask}
DECODERS = {JPG: decode_jpg, LMK: decode_npy, ID: decode_npy, LATENT: decode_npy, DEPTH: decode_depth,
            MASK: decode_mask, JSON: lambda b: json.loads(b.decode("utf-8"))}


def encode_members(image: np.ndarray, meta: dict[str, Any], arrays: dict[str, np.ndarray],
                   jpeg_quality: int = 95) -> dict[str, bytes]:
    """Tar members (extension -> bytes) of one accepted sample."""
    members = {JPG: encode_jpg(image, jpeg_quality),
               JSON: json.dumps(meta, sort_keys=True, separators=(",", ":")).encode("utf-8")}
    for name, arr in arrays.items():
        members[ARRAY_MEMBERS[name]] = ENCODERS[ARRAY_MEMBERS[name]](arr)
    return members


def decode_members(sample: dict[str, Any]) -> dict[str, Any]:
    """Decode a webdataset sample dict (extension -> bytes); unknown members pass through."""
    return {k: (DECODERS[k](v) if k in DECODERS and isinstance(v, bytes) else v) for k, v in sample.items()}


# ---- manifest ----------------------------------------------------------------------

BASE_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("key", pa.string()),
    ("unit", pa.int32()),
    ("shard", pa.string()),
    ("status", pa.string()),
    ("reason", pa.string()),
    ("identity", pa.string()),
    ("source", pa.string()),
    ("source_path", pa.string()),
    ("versions", pa.string()),  # JSON: stage -> backend@version
]
TIMING_PREFIX, TIMING_SUFFIX = "t_", "_ms"


def timing_column(stage: str) -> str:
    return f"{TIMING_PREFIX}{stage}{TIMING_SUFFIX}"


def manifest_schema(stage_fields: dict[str, pa.DataType], stage_names: list[str]) -> pa.Schema:
    """Base columns, then each stage's summary fields, then one timing column per stage."""
    cols = list(BASE_COLUMNS) + sorted(stage_fields.items())
    cols += [(timing_column(s), pa.float32()) for s in stage_names]
    return pa.schema(cols, metadata={"denseface_schema_version": str(SCHEMA_VERSION)})


def is_timing_column(name: str) -> bool:
    return name.startswith(TIMING_PREFIX) and name.endswith(TIMING_SUFFIX)


SHARD_GLOB = "shard-*"  # every unit's files: shard_name(unit) + ".tar", ".parquet", ...


def shard_name(unit: int) -> str:
    return f"shard-{unit:06d}"
