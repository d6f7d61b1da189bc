"""Deterministic planning: the same source listing always gives the same keys and units.

Resume depends on it: unit ``i`` of a re-run holds exactly the inputs of unit ``i`` of the
first run (its fingerprint says so), so a finished unit can be skipped safely.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from denseface.etl.readers import Record
from denseface.shards.schema import MAX_KEY_LEN

_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]+")
_SUFFIX = 9  # "-" + 8 hex digits of a hash
_MAX_BASE = MAX_KEY_LEN - _SUFFIX  # room for the clash suffix


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
    # surrogatepass: file names that are not UTF-8 reach here as lone surrogates
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def _base_key(rec: Record) -> str:
    stem = PurePosixPath(rec.rel).with_suffix("").as_posix() if not rec.error else rec.rel
    if rec.identity and not stem.startswith(f"{rec.identity}/"):
        stem = f"{rec.identity}/{stem}"
    key = _UNSAFE.sub("_", stem.replace("/", "-")).strip("_-") or "input"
    return key if len(key) <= _MAX_BASE else f"{key[:_MAX_BASE - _SUFFIX]}-{_digest(key)[:8]}"


def assign_keys(records: list[Record]) -> list[str]:
    """Readable keys (``identity-stem``), made unique by a path hash only where they clash
    (the n-th listing of one path hashes with n, so even a repeated input gets its own key)."""
    bases = [_base_key(r) for r in records]
    counts = Counter(bases)
    listed: Counter[tuple[str, str]] = Counter()
    keys = []
    for base, r in zip(bases, records):
        if counts[base] == 1:
            keys.append(base)
            continue
        n = listed[(r.source, r.source_path)]
        listed[(r.source, r.source_path)] += 1
        keys.append(f"{base}-{_digest(f'{r.source}:{r.source_path}' + (f'#{n}' if n else ''))[:8]}")
    taken = Counter(keys)  # a file named like another's hashed key: hash once more
    return [k if taken[k] == 1 else f"{k[:_MAX_BASE]}-{_digest(f'{k}#{i}')[:8]}" for i, k in enumerate(keys)]


def mark_repeats(records: list[Record]) -> list[Record]:
    """A path listed twice (two index lines, overlapping sources) is one input: the later
    listings become rejected rows saying so, so no image is written twice."""
    first: set[tuple[str, str]] = set()
    out = []
    for r in records:
        where = (r.source, r.source_path)
        if not r.error and where in first:
            r = dataclasses.replace(r, error="index: the same file is listed more than once")
        first.add(where)
        out.append(r)
    return out


def make_plan(records: Iterable[Record], shard_size: int) -> list[Unit]:
    """Sort, key and cut into units of ``shard_size`` inputs (the last may be shorter)."""
    recs = mark_repeats(sorted(records, key=lambda r: (r.source, r.rel, r.source_path, r.error)))
    keys = assign_keys(recs)
    units: list[Unit] = []
    for start in range(0, len(recs), shard_size):
        idx = len(units)
        inputs = tuple(PlannedInput(k, idx, r) for k, r in zip(keys[start:start + shard_size],
                                                                 recs[start:start + shard_size]))
        fp = _digest("\n".join(f"{p.key}\t{p.record.source_path}" for p in inputs))
        units.append(Unit(idx, inputs, fp))
    return units
