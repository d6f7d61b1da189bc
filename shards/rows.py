"""What one input leaves in a dataset: its sample json (a tar member) and its manifest row.

Built here, beside the schema, so that ``shards/`` owns every read and write of the format.
The input is anything with `Input`'s attributes (the ETL's ``annotators.base.Item``): a
Protocol, because ``shards/`` imports nothing of the stages.
"""
from __future__ import annotations

import json
from typing import Any, Protocol

from denseface.shards.schema import printable, timing_column


class Input(Protocol):
    """The attributes of one input that its json and manifest row record."""

    key: str
    unit: int
    status: str
    reason: str
    identity: str
    source: str
    source_path: str
    fields: dict[str, Any]  # the stages' scalars: sample json and manifest columns
    versions: dict[str, str]  # stage -> backend@version
    timings: dict[str, float]  # stage -> milliseconds


def sample_json(item: Input) -> dict[str, Any]:
    """The ``json`` member of an accepted sample."""
    meta = {"key": item.key, "identity": printable(item.identity), "source": item.source,
            "source_path": printable(item.source_path), "versions": dict(sorted(item.versions.items()))}
    meta.update(item.fields)
    return meta


def manifest_row(item: Input, shard: str, stage_names: list[str]) -> dict[str, Any]:
    """The manifest row of any input, accepted or not, with one timing column per stage."""
    row = {"key": item.key, "unit": item.unit, "shard": shard, "status": item.status,
           "reason": printable(item.reason), "identity": printable(item.identity), "source": item.source,
           "source_path": printable(item.source_path),
           "versions": json.dumps(dict(sorted(item.versions.items())), sort_keys=True)}
    row.update(item.fields)
    for name in stage_names:
        row[timing_column(name)] = item.timings.get(name)
    return row
