"""Reading a built dataset back: shard URLs, decoded samples, manifests."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from denseface.shards.schema import decode_members


def shard_paths(root: Path) -> list[Path]:
    return sorted(Path(root).glob("shard-*.tar"))


def read_manifest(root: Path) -> pd.DataFrame:
    """All manifest rows of a dataset (one per input, accepted or not)."""
    files = sorted((Path(root) / "manifest").glob("shard-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no manifest/shard-*.parquet under {root}")
    return pq.ParquetDataset(files).read().to_pandas()


def iter_samples(root: Path) -> Iterator[dict[str, Any]]:
    """Decoded samples with plain ``webdataset`` (no shuffling): for tools and tests."""
    import webdataset as wds

    urls = [str(p) for p in shard_paths(root)]
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        yield decode_members(sample)
