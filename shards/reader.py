"""Reading shards back: their URLs, their tar members, decoded samples.

`iter_members` is the one tar scanner of the project (verify, the identity index, the
inspection, the trainer's shard check), so the member naming rule is checked in one place
and a remote shard is read the same way as a local one.
"""
from __future__ import annotations

import contextlib
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from denseface.shards.schema import SHARD_GLOB, decode_members, is_safe_key

Member = tuple[str, str, bytes | None]  # (key, extension, data or None where not read)


def shard_paths(root: Path) -> list[Path]:
    return sorted(Path(root).glob(f"{SHARD_GLOB}.tar"))


def local_path(url: str) -> Path | None:
    """The file a shard URL names on this machine (``file:`` stripped), None for a remote one
    (``pipe:`` commands, ``s3://``, ``http://``, ...)."""
    if url.startswith("file:"):
        url = url[5:]
    if "://" in url or url.startswith("pipe:"):
        return None
    return Path(url)


def iter_members(url: str | Path, read: Callable[[str, str], bool] | None = None) -> Iterator[Member]:
    """Every member of one shard in tar order as (key, ext, data). ``data`` is read only where
    ``read(key, ext)`` is true (every member when ``read`` is None) and is None elsewhere: a
    local tar seeks over the rest, a remote one (webdataset's ``gopen``: ``pipe:``, ``s3://``,
    http) is streamed through. A member not named ``<safe key>.<ext>`` as the writer names
    them raises ValueError; a truncated or unreadable tar raises ``tarfile.TarError`` or OSError."""
    path = local_path(str(url))
    if path is not None:
        with tarfile.open(path, mode="r:") as tar:
            yield from _members(tar, read)
        return
    import webdataset as wds

    stream = wds.gopen(str(url))
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            yield from _members(tar, read)
    except BaseException:
        # the caller stopped early (the command then dies of SIGPIPE) or the tar broke: the
        # command's exit status adds nothing to that
        with contextlib.suppress(OSError):
            stream.close()
        raise
    stream.close()  # read to the end: a command that failed raises here


def _members(tar: tarfile.TarFile, read: Callable[[str, str], bool] | None) -> Iterator[Member]:
    for info in tar:
        key, dot, ext = info.name.partition(".")
        if not info.isfile() or not dot or not is_safe_key(key):
            raise ValueError(f"unexpected tar member {info.name!r}")
        yield key, ext, tar.extractfile(info).read() if read is None or read(key, ext) else None


def iter_samples(root: Path) -> Iterator[dict[str, Any]]:
    """Decoded samples with plain ``webdataset`` (no shuffling): for tools and tests."""
    import webdataset as wds

    urls = [str(p) for p in shard_paths(root)]
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        yield decode_members(sample)
