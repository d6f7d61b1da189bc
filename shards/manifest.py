"""Reading a dataset's manifests: finding them, loading them, and DuckDB SQL over them.

`manifest_files` is the one discovery of ``manifest/shard-*.parquet``. `query_manifest`
(``denseface manifest query``) exposes them as one view named ``manifest``: shards written by
different stage sets are merged by column name, and a column a shard lacks reads as NULL.
`accepted_keys` and `manifest_rows` are the SQL the inspection picks its samples with.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from denseface.shards.schema import SHARD_GLOB, Status


class ManifestError(ValueError):
    """A dataset, query or filter problem, with a message meant for the user."""


def manifest_files(dataset: str | Path) -> list[Path]:
    root = Path(dataset)
    if not root.is_dir():
        raise ManifestError(f"{root}: not a dataset folder (it does not exist or is not a folder)")
    files = sorted((root / "manifest").glob(f"{SHARD_GLOB}.parquet"))
    if not files:
        raise ManifestError(f"{root}: no manifest/{SHARD_GLOB}.parquet; is this a built dataset folder?")
    return files


def read_manifest(dataset: str | Path) -> pd.DataFrame:
    """All manifest rows of a dataset (one per input, accepted or not)."""
    return pq.ParquetDataset(manifest_files(dataset)).read().to_pandas()


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def connect(dataset: str | Path):
    """An in-memory DuckDB connection with the view ``manifest`` over the dataset's manifests."""
    import duckdb

    files = ", ".join(_sql_str(str(f)) for f in manifest_files(dataset))
    con = duckdb.connect(":memory:")
    con.execute(f"CREATE VIEW manifest AS SELECT * FROM read_parquet([{files}], union_by_name = true)")
    return con


def manifest_columns(con) -> list[str]:
    return [r[0] for r in con.execute("DESCRIBE manifest").fetchall()]


def query_manifest(dataset: str | Path, sql: str) -> pd.DataFrame:
    """Result of DuckDB ``sql`` over the view ``manifest`` (one row per input), e.g.
    ``SELECT identity, count(*) AS n FROM manifest WHERE status = 'ok' GROUP BY 1``."""
    import duckdb

    with connect(dataset) as con:
        try:
            return con.execute(sql).df()
        except duckdb.Error as e:
            cols = ", ".join(manifest_columns(con))
            raise ManifestError(f"manifest query failed: {e}\n  query: {sql}\n  the view is `manifest`, "
                                f"columns: {cols}") from None


def accepted_keys(dataset: str | Path, where: str | None = None, limit: int | None = None) -> list[str]:
    """Keys of accepted samples matching ``where`` (a DuckDB boolean expression over the
    manifest's columns, as ``--where``), in key order, at most ``limit``. No match is a
    `ManifestError` saying how many samples the dataset accepted."""
    import duckdb

    cond = f"status = {_sql_str(Status.OK)}"
    if where and where.strip():
        cond += f" AND ({where})"
    tail = "" if limit is None else f" LIMIT {int(limit)}"
    with connect(dataset) as con:
        try:
            keys = [r[0] for r in con.execute(f"SELECT key FROM manifest WHERE {cond} ORDER BY key{tail}").fetchall()]
        except duckdb.Error as e:
            cols = ", ".join(manifest_columns(con))
            raise ManifestError(f"--where {where!r} is not a valid DuckDB condition on the manifest: {e}\n"
                                f"  columns: {cols}") from None
        if not keys:
            n_ok = con.execute(f"SELECT count(*) FROM manifest WHERE status = {_sql_str(Status.OK)}").fetchone()[0]
            what = f"match --where {where!r}" if where and where.strip() else "exist"
            raise ManifestError(f"no accepted samples {what} in {dataset} "
                                f"({n_ok} accepted in the dataset)")
    return keys


def manifest_rows(dataset: str | Path, keys: Sequence[str]) -> pd.DataFrame:
    """The manifest rows of these accepted samples, in key order."""
    with connect(dataset) as con:
        con.register("picked", pd.DataFrame({"key": list(keys)}))
        df = con.execute(f"SELECT m.* FROM manifest m JOIN picked USING (key) "
                         f"WHERE m.status = {_sql_str(Status.OK)} ORDER BY m.key").df()
    return df.reset_index(drop=True)
