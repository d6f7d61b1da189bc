"""shards/manifest.py: manifest discovery, reading, and DuckDB SQL over the manifests."""
from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from denseface.shards.manifest import (
    ManifestError,
    accepted_keys,
    manifest_files,
    manifest_rows,
    query_manifest,
    read_manifest,
)


@pytest.fixture()
def two_stage_sets(tmp_path):
    """Two manifests written by different stage sets: the second has a ``yaw`` column, the first not."""
    (tmp_path / "manifest").mkdir()
    pq.write_table(pa.table({"key": ["b", "a", "c"], "status": ["ok", "ok", "rejected"],
                             "identity": ["p", "q", "q"]}), tmp_path / "manifest" / "shard-000000.parquet")
    pq.write_table(pa.table({"key": ["e", "d"], "status": ["ok", "ok"], "identity": ["p", "p"],
                             "yaw": [30.0, -5.0]}), tmp_path / "manifest" / "shard-000001.parquet")
    (tmp_path / "manifest" / "notes.parquet").write_bytes(b"not a unit's manifest")
    return tmp_path


def test_manifest_files_finds_the_units_manifests_only(two_stage_sets, tmp_path):
    assert [f.name for f in manifest_files(two_stage_sets)] == ["shard-000000.parquet", "shard-000001.parquet"]
    with pytest.raises(ManifestError, match="not a dataset folder"):
        manifest_files(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match=r"no manifest/shard-\*\.parquet"):
        manifest_files(tmp_path / "empty")


def test_read_manifest_and_sql_see_the_same_rows(two_stage_sets):
    df = read_manifest(two_stage_sets)
    assert sorted(df["key"]) == ["a", "b", "c", "d", "e"]
    sql = query_manifest(two_stage_sets, "SELECT key, yaw FROM manifest ORDER BY key")
    assert list(sql["key"]) == ["a", "b", "c", "d", "e"]
    assert sql["yaw"].isna().tolist() == [True, True, True, False, False]  # union by name: absent reads as NULL


def test_accepted_keys_and_their_rows(two_stage_sets):
    assert accepted_keys(two_stage_sets) == ["a", "b", "d", "e"]  # accepted only, in key order
    assert accepted_keys(two_stage_sets, limit=2) == ["a", "b"]
    assert accepted_keys(two_stage_sets, where="yaw > 0") == ["e"]
    assert accepted_keys(two_stage_sets, where="identity = 'q'") == ["a"]
    with pytest.raises(ManifestError, match=r"no accepted samples match --where 'yaw > 90' .*\(4 accepted"):
        accepted_keys(two_stage_sets, where="yaw > 90")
    with pytest.raises(ManifestError, match=r"(?s)not a valid DuckDB condition.*columns: key, status"):
        accepted_keys(two_stage_sets, where="pitch > 0")
    rows = manifest_rows(two_stage_sets, ["e", "a", "c"])  # c is rejected: not a sample
    assert list(rows["key"]) == ["a", "e"] and list(rows.index) == [0, 1]
    assert rows.set_index("key").loc["e", "yaw"] == 30.0


# ---- on the built sample ----------------------------------------------------------------


def test_query_manifest_group_by(built_sample):
    df = query_manifest(built_sample, "SELECT identity, count(*) AS n FROM manifest GROUP BY 1 ORDER BY 1")
    assert isinstance(df, pd.DataFrame)
    counts = dict(zip(df["identity"], df["n"]))
    assert counts["obama"] == 6 and sum(counts.values()) == json.loads(
        (built_sample / "run_summary.json").read_text())["inputs"]


def test_query_manifest_bad_sql(built_sample, tmp_path):
    with pytest.raises(ManifestError, match=r"(?s)manifest query failed.*SELEC"):
        query_manifest(built_sample, "SELEC 1 FROM manifest")
    with pytest.raises(ManifestError, match=r"(?s)nosuchcolumn.*columns: key"):
        query_manifest(built_sample, "SELECT nosuchcolumn FROM manifest")
    with pytest.raises(ManifestError, match="no manifest"):
        query_manifest(tmp_path, "SELECT 1")
