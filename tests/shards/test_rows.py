"""shards/rows.py: an input's sample json and manifest row, from any object with `Input`'s attributes."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from denseface.shards.rows import manifest_row, sample_json


@dataclass
class Plain:
    """Not an ``annotators.base.Item``: shards needs only the attributes."""

    key: str = "k_0"
    unit: int = 3
    status: str = "rejected"
    reason: str = "decode: bad \udcff byte"
    identity: str = "caf\udce9"  # a non-UTF-8 byte kept by the OS as a surrogate
    source: str = "casia"
    source_path: str = "/d/caf\udce9/0.jpg"
    fields: dict[str, Any] = field(default_factory=lambda: {"yaw": 1.5})
    versions: dict[str, str] = field(default_factory=lambda: {"z": "default@1", "a": "pnp@2"})
    timings: dict[str, float] = field(default_factory=lambda: {"decode": 2.0})


def test_sample_json_is_printable_and_carries_the_fields():
    meta = sample_json(Plain())
    assert meta == {"key": "k_0", "identity": "caf\\xe9", "source": "casia", "source_path": "/d/caf\\xe9/0.jpg",
                    "versions": {"a": "pnp@2", "z": "default@1"}, "yaw": 1.5}
    assert list(meta["versions"]) == ["a", "z"]
    json.dumps(meta).encode("utf-8")  # no surrogate left


def test_manifest_row_has_a_timing_column_per_stage():
    row = manifest_row(Plain(), "shard-000003", ["decode", "landmarks"])
    assert row["shard"] == "shard-000003" and row["unit"] == 3 and row["status"] == "rejected"
    assert row["reason"] == "decode: bad \\xff byte" and row["identity"] == "caf\\xe9"
    assert json.loads(row["versions"]) == {"a": "pnp@2", "z": "default@1"}
    assert row["t_decode_ms"] == 2.0 and row["t_landmarks_ms"] is None and row["yaw"] == 1.5
