"""One finished unit to its files: tar members, manifest rows and stats, written by `shards.writer`.

It runs in whichever process ran the last stage group (a Ray worker or the local process), so
sample bytes never travel to the driver: one writer per unit, commit mark last, as img2dataset
does. A Ray driver spent about 1.2 ms of CPU per image writing shards, a core's worth at
800 images/s (docs/benchmarks.md).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from denseface.annotators.base import Item
from denseface.shards import schema
from denseface.shards.rows import manifest_row, sample_json
from denseface.shards.writer import write_unit


def _reason_class(reason: str) -> str:
    """``"decode: image too small: 1x1 ..."`` -> ``"decode: image too small"``: groups for summaries."""
    return ":".join(reason.split(":")[:2]).strip()


@dataclass(frozen=True)
class UnitWriter:
    """Everything a worker needs to write units of one build; sent to each Ray worker once."""

    root: Path  # absolute: a Ray worker does not run in the driver's working directory
    stage_names: tuple[str, ...]
    arrow_schema: pa.Schema
    build_fp: str
    jpeg_quality: int

    def pack(self, item: Item) -> None:
        """An accepted item's pixels and arrays to tar member bytes, right after its last stage,
        so a unit in the making holds encoded samples, not pixels."""
        if item.ok:
            try:
                item.members = schema.encode_members(item.image, sample_json(item), item.arrays,
                                                     self.jpeg_quality)
            except Exception as exc:  # noqa: BLE001 - one sample's encoding must not stop the unit
                item.fail(schema.Status.ERROR, f"pack: {type(exc).__name__}: {exc}")
        item.image = None
        item.arrays = {}
        item.scratch = {}

    def write(self, unit: int, fingerprint: str, items: list[Item]) -> dict[str, Any]:
        """Writes the unit of these (packed) items, all its inputs; returns its stats."""
        shard = schema.shard_name(unit)
        keep = set(self.arrow_schema.names)
        names = list(self.stage_names)
        rows = [{k: v for k, v in manifest_row(it, shard, names).items() if k in keep} for it in items]
        samples = [(it.key, it.members) for it in items if it.ok]
        statuses = Counter(it.status for it in items)
        members = sorted({ext for _, m in samples for ext in m}) or list(schema.REQUIRED_MEMBERS)
        stats = {"unit": unit, "fingerprint": fingerprint, "build_fingerprint": self.build_fp,
                 "n_inputs": len(items), "n_ok": statuses[schema.Status.OK],
                 "n_rejected": statuses[schema.Status.REJECTED], "n_error": statuses[schema.Status.ERROR],
                 "members": members,
                 "reasons": dict(Counter(_reason_class(it.reason) for it in items if not it.ok)),
                 "ms_total": {n: round(sum(it.timings.get(n, 0.0) for it in items), 3) for n in names},
                 "n_timed": {n: sum(n in it.timings for it in items) for n in names}}
        return write_unit(self.root, unit, samples, rows, self.arrow_schema, stats)
