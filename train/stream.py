"""A deterministic, resumable stream of raw webdataset samples: the pipeline's first stage.

Why not ``wds.WebDataset(urls, nodesplitter=split_by_node, workersplitter=split_by_worker,
shardshuffle=...)`` as is: its shard and sample shuffles draw from time-seeded generators, so
a resumed run cannot see the batches an uninterrupted run would have seen. This stage does
the same jobs (shard shuffle, split by node, split by worker, buffer shuffle, tar reading
through webdataset's ``tarfile_samples`` with ``warn_and_continue``) with every random draw
seeded from (seed, epoch, ...), and it records where each batch came from:

* each epoch, the shard list is shuffled with seed (seed, epoch) — the same on every rank and
  worker — then split: ``shards[rank::world][worker::workers]``;
* a worker's shards are read in chunks of ``chunk_shards``; samples are buffer-shuffled within
  a chunk (the buffer is flushed at the chunk's end), with seed (seed, epoch, rank, worker,
  chunk). A worker loops over epochs forever, so the DataLoader's round-robin over workers
  never changes (no worker runs dry first) and the trainer decides when to stop;
* every sample carries ``__pos__ = (epoch, chunk, n)``: it was the n-th sample the shuffle put
  out in that chunk, and ``__worker__``, the logical worker.

Resume: for each logical worker the trainer keeps the ``__pos__`` of the last batch it used;
a new stream skips the earlier chunks without opening them and re-reads (without decoding)
at most one chunk up to that position. ``worker_offset`` rotates physical DataLoader workers
onto logical ones so that the first batch after a resume comes from the logical worker the
uninterrupted run would have asked next.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from typing import Any

import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

Position = tuple[int, int, int]  # (epoch, chunk, n-th sample out of the chunk's shuffle)


def seed_of(*parts: Any) -> int:
    """A stable 64-bit seed (Python's hash() is salted per process, so it cannot be used)."""
    return int.from_bytes(hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest(), "little")


def buffer_shuffle(src: Iterator[dict], bufsize: int, rng: random.Random) -> Iterator[dict]:
    """Classic reservoir-style shuffle buffer, flushed (shuffled) when the source ends."""
    buf: list[dict] = []
    for s in src:
        if len(buf) < bufsize:
            buf.append(s)
            continue
        i = rng.randrange(len(buf))
        out, buf[i] = buf[i], s
        yield out
    rng.shuffle(buf)
    yield from buf


class ShardStream(IterableDataset):
    """Source stage of a ``wds.DataPipeline`` (module docstring)."""

    def __init__(self, urls: Sequence[str], seed: int = 0, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, shuffle: bool = True, chunk_shards: int = 4,
                 buffer_size: int = 1000, loop: bool = True) -> None:
        super().__init__()
        self.urls = list(urls)
        if not self.urls:
            raise ValueError("no shard URLs")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.num_workers = max(1, num_workers)  # logical workers; 0 DataLoader workers = one
        if len(self.urls) < world_size * self.num_workers:
            raise ValueError(f"{len(self.urls)} shard(s) cannot feed {world_size} process(es) x "
                             f"{self.num_workers} worker(s); use fewer workers or more, smaller shards")
        self.shuffle, self.chunk_shards, self.buffer_size, self.loop = shuffle, max(1, chunk_shards), buffer_size, loop
        self.worker_offset = 0
        self.resume: dict[int, Position] = {}

    def logical_worker(self) -> int:
        info = get_worker_info()
        physical, n = (info.id, info.num_workers) if info is not None else (0, 1)
        if n != self.num_workers:
            raise RuntimeError(f"stream built for {self.num_workers} worker(s), run by {n}")
        return (physical + self.worker_offset) % n

    def shards(self, epoch: int, worker: int) -> list[str]:
        urls = list(self.urls)
        if self.shuffle:
            random.Random(seed_of(self.seed, "shards", epoch)).shuffle(urls)
        return urls[self.rank::self.world_size][worker::self.num_workers]

    def __iter__(self) -> Iterator[dict]:
        worker = self.logical_worker()
        start = self.resume.get(worker)
        epoch = start[0] if start is not None else 0
        empty = 0  # consecutive epochs without a single sample: stop instead of spinning forever
        while True:
            shards = self.shards(epoch, worker)
            produced = False
            for c in range(0, len(shards), self.chunk_shards):
                chunk = c // self.chunk_shards
                if start is not None and (epoch, chunk) < tuple(start[:2]):
                    continue
                skip = start[2] if start is not None and (epoch, chunk) == tuple(start[:2]) else 0
                samples = wds.tarfile_samples([{"url": u} for u in shards[c:c + self.chunk_shards]],
                                              handler=wds.warn_and_continue)
                if self.shuffle:
                    rng = random.Random(seed_of(self.seed, "samples", epoch, self.rank, worker, chunk))
                    samples = buffer_shuffle(samples, self.buffer_size, rng)
                for n, sample in enumerate(samples, 1):
                    if n <= skip:
                        continue  # already trained on: read again, not decoded
                    sample["__pos__"] = (epoch, chunk, n)
                    sample["__worker__"] = worker
                    produced = True
                    yield sample
            empty = 0 if produced else empty + 1
            if empty >= 2:
                raise RuntimeError(f"worker {worker} of rank {self.rank}: shards {shards} hold no readable sample")
            start = None
            epoch += 1
            if not self.loop:
                return
