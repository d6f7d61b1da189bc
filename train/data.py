"""The training data pipeline: shards -> decoded samples -> training tensors -> batches.

Modelled on open_clip's ``training/data.py``: a ``wds.DataPipeline`` whose stages run in the
DataLoader workers (reading, shuffling, decoding, target rendering and batching all happen
there; the loader gets whole batches, ``batch_size=None``). The source stage is
`denseface.train.stream.ShardStream` (deterministic and resumable, see there).

Per sample (`SampleToTensors`), at training resolution R (512 for SD 2.1, 64 for the tiny
model) and dense-head size S (R/8 by default, the latent size):

* ``image`` (3, R, R) in [-1, 1], or ``latent`` (4, R/8, R/8) when the shard has
  ``latent.npy`` (convention: the VAE posterior mean, before ``scaling_factor``) made by the
  trainer's own VAE (json ``latent_vae`` = `vae_fingerprint`) at this resolution, so the
  trainer skips the VAE; any other latent is ignored;
* ``landmarks`` (478, 2) in [0, 1], and ``heatmaps`` (478, S, S) (Gaussian, ``sigma`` in
  head pixels) unless the trainer renders them on the accelerator (large S);
* ``mask`` (S, S) int64 class ids (nearest), ``depth`` (1, S, S) in [0, 1] (area);
* ``pose_image`` (3, R, R) in [0, 1] drawn from the json's yaw/pitch/roll;
* ``caption``: one of the json's top captions at random, "" with probability
  ``caption_dropout`` (classifier-free guidance);
* ``id_emb`` (d,) float32: the embedding of a different image of the same identity
  (`IdentityIndex`), the sample's own when it is its identity's only image; ``ref_key``.

A sample's random choices come from a generator seeded by (seed, epoch, key), so they do not
depend on which worker decodes it or where a run was resumed. A sample that cannot be used
(undecodable member, missing member or field) is dropped with a `CorruptSampleWarning`;
a stream in which nothing decodes for two whole passes stops with the last error.
"""
from __future__ import annotations

import gc
import glob
import tarfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import webdataset as wds
from webdataset.shardlists import expand_urls

from denseface.errors import UserError
from denseface.shards.reader import local_path, shard_paths
from denseface.shards.schema import DEPTH, ID, JPG, JSON, LATENT, LMK, MASK, decode_members
from denseface.shards.verify import tar_members
from denseface.train.identity_index import IdentityIndex
from denseface.train.stream import Position, ShardStream, seed_of
from denseface.train.targets import depth_tensor, image_tensor, mask_tensor, pose_tensor, render_heatmaps

NEEDED = (JSON, LMK, DEPTH, MASK)


class CorruptSampleWarning(UserWarning):
    """A sample was skipped because it cannot become a training example."""


class BadShardError(UserError):
    """A shard that cannot be read (truncated, not a tar): names the shard and the problem."""


def shard_problem(url: str) -> str:
    """Why a local shard cannot be read ('' = its tar headers read to the end; remote URLs
    are not opened here). Only headers are read (seeks over the data), so this is cheap."""
    if local_path(url) is None:
        return ""
    try:
        tar_members(url)
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


def usable_shards(urls: Sequence[str], bad_shards: str = "stop") -> list[str]:
    """The shards to train on. A broken local shard stops the run with a message naming it
    (``bad_shards="stop"``, the default) or is left out, warned about and counted ("skip")."""
    problems = {u: p for u in urls if (p := shard_problem(u))}
    if problems and bad_shards == "stop":
        url, problem = next(iter(problems.items()))
        raise BadShardError(f"shard {url} is unreadable ({problem}); {len(problems)} of {len(urls)} shard(s) are "
                            f"broken. Repair it (denseface build-dataset re-run) or train with --skip-bad-shards")
    for url, problem in problems.items():
        warnings.warn(f"skipping unreadable shard {url}: {problem}", CorruptSampleWarning, stacklevel=2)
    if problems:
        warnings.warn(f"skipped {len(problems)} of {len(urls)} shard(s) as unreadable", CorruptSampleWarning,
                      stacklevel=2)
    good = [u for u in urls if u not in problems]
    if not good:
        raise BadShardError(f"none of the {len(urls)} shard(s) can be read (first: {urls[0]})")
    return good


def resolve_urls(data: Sequence[str] | str, bad_shards: str = "stop") -> list[str]:
    """Shard URLs from dataset folders (their ``shard-*.tar``), brace patterns
    (``shard-{000000..000009}.tar``), local globs, or pipe:/fsspec URLs taken as they are;
    broken local shards are handled as `usable_shards` says."""
    out: list[str] = []
    for item in [data] if isinstance(data, str) else data:
        item = str(item)
        path = local_path(item)
        if path is not None and path.is_dir():
            found = [str(p) for p in shard_paths(path)]
            if not found:
                raise UserError(f"no shard-*.tar in {item}")
            out += found
        elif "{" in item:
            out += expand_urls(item)
        elif path is not None and any(c in item for c in "*?["):
            out += sorted(glob.glob(str(path)))
        else:
            out.append(item)
    if not out:
        raise UserError(f"no shards in {data!r}")
    missing = [u for u in out if (p := local_path(u)) is not None and not p.exists()]
    if missing:
        raise UserError(f"training data not found: {missing[0]}" + (f" (and {len(missing) - 1} more)"
                                                                      if len(missing) > 1 else ""))
    return usable_shards(out, bad_shards)


@dataclass
class SampleToTensors:
    """Decoded webdataset sample -> training example (module docstring). Picklable."""

    resolution: int
    head_size: int
    sigma: float = 1.0
    caption_dropout: float = 0.0
    seed: int = 0
    index: IdentityIndex | None = None
    heatmaps: bool = True
    latent_vae: str | None = None  # use latent.npy made by this VAE (json ``latent_vae``); None: never

    def __call__(self, raw: dict[str, Any]) -> dict[str, Any]:
        key = raw["__key__"]
        missing = [m for m in NEEDED if m not in raw]
        if missing:
            raise KeyError(f"missing member(s) {', '.join(missing)}")
        s = decode_members({m: raw[m] for m in NEEDED + ((ID,) if ID in raw else ())})
        meta = s[JSON]
        z = self.cached_latent(raw, meta)
        if z is None and JPG not in raw:
            raise KeyError(f"missing member {JPG} (and no usable {LATENT})")
        rng = np.random.default_rng(seed_of(self.seed, raw["__pos__"][0], key))
        out: dict[str, Any] = {"key": key, "__pos__": raw["__pos__"], "__worker__": raw["__worker__"]}
        if z is not None:
            out["latent"] = z
        else:
            out["image"] = image_tensor(decode_members({JPG: raw[JPG]})[JPG], self.resolution)
        lmk = np.asarray(s[LMK], np.float32)
        if lmk.ndim != 2 or lmk.shape[1] < 2:
            raise ValueError(f"landmarks have shape {lmk.shape}")
        out["landmarks"] = torch.from_numpy(np.ascontiguousarray(lmk[:, :2]))
        if self.heatmaps:
            out["heatmaps"] = render_heatmaps(out["landmarks"], self.head_size, self.sigma)
        out["mask"] = mask_tensor(s[MASK], self.head_size)
        out["depth"] = depth_tensor(s[DEPTH], self.head_size)
        try:
            out["pose_image"] = pose_tensor(meta["yaw"], meta["pitch"], meta["roll"], self.resolution)
        except KeyError as exc:
            raise KeyError(f"json lacks head pose field {exc} (the head_pose stage must have run)") from None
        out["caption"] = self.caption(meta, rng)
        ref = self.index.reference(key, rng) if self.index is not None else None
        if ref is None:  # not in the index (or no index): the sample's own embedding
            if ID not in s:
                raise KeyError(f"missing member {ID} and key not in the identity index")
            ref = key, np.asarray(s[ID], np.float32).ravel()
        out["ref_key"], out["id_emb"] = ref[0], torch.from_numpy(np.array(ref[1], np.float32))
        return out

    def cached_latent(self, raw: dict[str, Any], meta: dict) -> torch.Tensor | None:
        """The sample's latent if it was made by the trainer's VAE at this resolution, else None
        (the image goes through the VAE instead)."""
        if self.latent_vae is None or LATENT not in raw or meta.get("latent_vae") != self.latent_vae:
            return None
        z = torch.from_numpy(np.asarray(decode_members({LATENT: raw[LATENT]})[LATENT], np.float32))
        return z if tuple(z.shape[-2:]) == (self.resolution // 8, self.resolution // 8) else None

    def caption(self, meta: dict, rng: np.random.Generator) -> str:
        texts = [c["text"] for c in meta.get("captions") or [] if isinstance(c, dict) and c.get("text")]
        drop = rng.random() < self.caption_dropout  # drawn always, so dropout does not shift other draws
        pick = int(rng.integers(len(texts))) if texts else 0
        return "" if drop or not texts else texts[pick]


def decode_stage(transform: SampleToTensors):
    """Pipeline stage: transform every sample, warn about and drop the ones that fail."""

    def stage(src: Iterator[dict]) -> Iterator[dict]:
        good_epoch, last_error = None, None
        for raw in src:
            epoch = raw["__pos__"][0]
            try:
                out = transform(raw)
            except Exception as exc:  # noqa: BLE001 - one bad sample must not stop training
                last_error = f"{type(exc).__name__}: {exc}"
                warnings.warn(f"skipping sample {raw.get('__key__')!r} of {raw.get('__url__')}: {last_error}",
                              CorruptSampleWarning, stacklevel=2)
                if good_epoch is None:
                    good_epoch = epoch
                if epoch - good_epoch >= 2:
                    raise RuntimeError(f"no usable sample in two passes over the shards; last error: {last_error}")
                continue
            good_epoch = epoch
            yield out

    return stage


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors, list strings; ``image``/``latent`` may be present for only some samples
    (``has_latent`` says which; the missing ones are zeros). Batch position = its last sample's."""
    batch: dict[str, Any] = {}
    for k in samples[0]:
        if k in ("image", "latent", "__pos__", "__worker__"):
            continue
        vals = [s[k] for s in samples]
        batch[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    has_latent = torch.tensor(["latent" in s for s in samples])
    for k in ("image", "latent"):
        present = [s[k] for s in samples if k in s]
        if present:
            zero = torch.zeros_like(present[0])
            batch[k] = torch.stack([s.get(k, zero) for s in samples])
    batch["has_latent"] = has_latent
    batch["__pos__"] = samples[-1]["__pos__"]
    batch["__worker__"] = samples[-1]["__worker__"]
    return batch


@dataclass
class DataState:
    """Where a rank's loader is: per logical worker, the position of the last batch used."""

    num_workers: int
    world_size: int = 1
    rank: int = 0
    positions: dict[int, Position] = field(default_factory=dict)
    next_worker: int = 0

    def update(self, batch: dict[str, Any]) -> None:
        w = int(batch["__worker__"])
        self.positions[w] = tuple(int(v) for v in batch["__pos__"])
        self.next_worker = (w + 1) % max(1, self.num_workers)

    def to_dict(self) -> dict:
        return {"num_workers": self.num_workers, "world_size": self.world_size, "rank": self.rank,
                "positions": {str(k): list(v) for k, v in self.positions.items()}, "next_worker": self.next_worker}

    @classmethod
    def from_dict(cls, d: dict) -> "DataState":
        return cls(d["num_workers"], d["world_size"], d["rank"],
                   {int(k): tuple(v) for k, v in d["positions"].items()}, d["next_worker"])


def check_shards_per_process(n_shards: int, world_size: int) -> None:
    """Every process reads its own shards, so a launch with more processes than shards is the
    user's to fix (fewer processes, or a rebuild with a smaller ``--shard-size``)."""
    if n_shards < world_size:
        raise UserError(f"{n_shards} shard(s) for {world_size} processes: every process needs at least one; "
                        "launch fewer processes or rebuild the dataset with a smaller --shard-size")


def effective_workers(n_shards: int, world_size: int, wanted: int) -> int:
    """DataLoader workers actually used: every worker of every rank needs at least one shard."""
    check_shards_per_process(n_shards, world_size)
    n = min(wanted, n_shards // world_size)
    if n < wanted:
        warnings.warn(f"{n_shards} shard(s) for {world_size} process(es): using {n} DataLoader worker(s) "
                      f"instead of {wanted}", stacklevel=2)
    return n


def make_pipeline(urls: Sequence[str], transform: SampleToTensors, batch_size: int, *, seed: int = 0,
                  rank: int = 0, world_size: int = 1, num_workers: int = 0, shuffle: bool = True,
                  chunk_shards: int = 4, buffer_size: int = 1000, loop: bool = True,
                  state: DataState | None = None) -> wds.DataPipeline:
    """The pipeline (an IterableDataset yielding batches), positioned at ``state`` if given."""
    stream = ShardStream(urls, seed=seed, rank=rank, world_size=world_size, num_workers=num_workers,
                         shuffle=shuffle, chunk_shards=chunk_shards, buffer_size=buffer_size, loop=loop)
    if state is not None and state.positions:
        if (state.num_workers, state.world_size, state.rank) != (max(1, num_workers), world_size, rank):
            warnings.warn(f"data position saved with {state.num_workers} worker(s) x {state.world_size} process(es) "
                          f"(rank {state.rank}); now {max(1, num_workers)} x {world_size} (rank {rank}): "
                          "the data stream restarts, so the run will not repeat the uninterrupted one", stacklevel=2)
        else:
            stream.resume, stream.worker_offset = dict(state.positions), state.next_worker
    return wds.DataPipeline(stream, decode_stage(transform),
                            wds.batched(batch_size, collation_fn=collate, partial=not loop))


def make_loader(pipeline: wds.DataPipeline, num_workers: int, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(pipeline, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                                       persistent_workers=False, prefetch_factor=2 if num_workers else None)


def start_workers(loader: torch.utils.data.DataLoader):
    """``iter(loader)`` with the parent's garbage collected and frozen while the workers fork:
    a forked worker whose garbage collector frees a CUDA tensor inherited from the parent makes
    a CUDA call and aborts ("CUDA error: initialization error")."""
    if not loader.num_workers:
        return iter(loader)
    gc.collect()
    gc.freeze()
    try:
        return iter(loader)
    finally:
        gc.unfreeze()
