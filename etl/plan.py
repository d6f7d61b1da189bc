"""Deterministic planning: the same source listing always gives the same keys and units.

Resume depends on it: unit ``i`` of a re-run holds exactly the inputs of unit ``i`` of the
first run (its fingerprint says so), so a finished unit can be skipped safely.
"""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from denseface.etl.readers import Record

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]+")
_MAX_KEY = 120


@dataclass(frozen=True)
class PlannedInput:
    key: str
    unit: int
    record: Record


@dataclass(frozen=True)
class Unit:
    index: int
    inputs: tuple[PlannedInput, ...]
    fingerprint: str


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _base_key(rec: Record) -> str:
    stem = PurePosixPath(rec.rel).with_suffix("").as_posix() if not rec.error else rec.rel
    if rec.identity and not stem.startswith(f"{rec.identity}/"):
        stem = f"{rec.identity}/{stem}"
    key = _UNSAFE.sub("_", stem.replace("/", "-")).strip("_-") or "input"
    return key if len(key) <= _MAX_KEY else f"{key[:_MAX_KEY - 9]}-{_digest(key)[:8]}"


def assign_keys(records: list[Record]) -> list[str]:
    """Readable keys (``identity-stem``), made unique by a path hash only where they clash."""
    bases = [_base_key(r) for r in records]
    counts = Counter(bases)
    return [b if counts[b] == 1 else f"{b}-{_digest(r.source + ':' + r.source_path)[:8]}"
            for b, r in zip(bases, records)]


def make_plan(records: Iterable[Record], shard_size: int) -> list[Unit]:
    """Sort, key and cut into units of ``shard_size`` inputs (the last may be shorter)."""
    recs = sorted(records, key=lambda r: (r.source, r.rel, r.source_path))
    keys = assign_keys(recs)
    units: list[Unit] = []
    for start in range(0, len(recs), shard_size):
        idx = len(units)
        inputs = tuple(PlannedInput(k, idx, r) for k, r in zip(keys[start:start + shard_size],
                                                                 recs[start:start + shard_size]))
        fp = _digest("\n".join(f"{p.key}\t{p.record.source_path}" for p in inputs))
        units.append(Unit(idx, inputs, fp))
    return units
