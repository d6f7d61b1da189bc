"""What every ETL stage shares: the in-flight item, the stage contract, and error capture.

A stage is a plain object whose ``process`` runs over a list of items, so it is usable
without Ray; the Ray pipeline only wraps groups of stages. A stage never raises for one
bad input: `Reject` marks the item rejected (bad input), any other exception marks it
``error`` (a bug or a transient fault), and the rest of the batch goes on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from denseface.config import BuildConfig, StageConfig
from denseface.geometry.raster import zbuffer
from denseface.model_refs import Resolved
from denseface.shards.schema import Status


class Reject(Exception):
    """Raised by a stage for an input that cannot become a sample; the message is the reason."""


@dataclass
class Item:
    """One input image travelling through the stages."""

    key: str
    identity: str
    source: str
    source_path: str
    unit: int
    status: str = Status.OK
    reason: str = ""
    image: np.ndarray | None = None  # RGB uint8; the 512 crop once aligned
    fields: dict[str, Any] = field(default_factory=dict)  # JSON/manifest scalars
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # landmarks, depth, mask, ...
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds per stage
    versions: dict[str, str] = field(default_factory=dict)  # stage -> backend@version
    members: dict[str, bytes] = field(default_factory=dict)  # encoded tar members, once packed
    scratch: dict[str, Any] = field(default_factory=dict)  # shared by stages, never written out

    @property
    def ok(self) -> bool:
        return self.status == Status.OK

    def fail(self, status: str, reason: str) -> None:
        self.status, self.reason = status, reason
        self.image = None  # a failed item carries no pixels further
        self.arrays.clear()
        self.members.clear()
        self.scratch.clear()


class Stage:
    """Base class: subclasses set ``name``/``version`` and implement ``process_one``
    (or ``process_batch`` for batched models). ``setup`` loads models once per worker."""

    name: ClassVar[str] = "stage"
    version: ClassVar[str] = "0"
    # Summary fields this stage puts in ``item.fields`` for the manifest: name -> Arrow
    # type alias ("int32", "float32", "string", "list<float32>", ...).
    manifest_fields: ClassVar[dict[str, str]] = {}
    # The backends ``stages.NAME.backend`` may name, the default (what leaving it out means) first.
    # A stage with one implementation has the one named "default", as its outputs record it.
    BACKENDS: ClassVar[tuple[str, ...]] = ("default",)

    def __init__(self, build: BuildConfig, conf: StageConfig | None = None) -> None:
        self.build = build
        self.conf = conf or build.stage(self.name)
        self.backend = self.resolve_backend(self.conf.backend)
        self._ready = False

    @classmethod
    def resolve_backend(cls, backend: str | None) -> str:
        """The backend a config names (None: the default). `BuildConfig` checks names with it as the
        config loads, so an unknown one fails there rather than when the stage is built."""
        if backend is None:
            return cls.BACKENDS[0]
        if backend not in cls.BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; {cls.name}'s backends are {', '.join(cls.BACKENDS)} "
                             f"(leave it out for {cls.BACKENDS[0]})")
        return backend

    def check(self) -> None:
        """Fail at start-up (before any work) when the configured backend cannot run."""

    def weights(self) -> list[Resolved]:
        """The models the configured backend loads, and where they are (`denseface weights check`)."""
        return []

    def setup(self) -> None:
        """Load models; called lazily in the worker that runs the stage."""

    def device(self) -> str:
        """Where a torch model of this stage runs: "cuda" if the stage asks for GPUs and one exists."""
        if self.conf.num_gpus > 0:
            import torch

            if torch.cuda.is_available():
                return "cuda"
        return "cpu"

    def process_one(self, item: Item) -> None:
        raise NotImplementedError

    def process_batch(self, items: list[Item]) -> None:
        for item in items:
            self._guarded(item, self.process_one)

    def process(self, items: list[Item]) -> list[Item]:
        live = [it for it in items if it.ok]
        if live and not self._ready:  # a batch of rejects needs no model
            self.setup()
            self._ready = True
        if live:
            start = time.perf_counter()
            try:
                self.process_batch(live)
            except Exception:  # a batched backend failed as a whole: isolate the culprit
                for item in live:
                    if item.ok:
                        self._guarded(item, lambda it: self.process_batch([it]))
            per_item = (time.perf_counter() - start) * 1000.0 / len(live)
            tag = f"{self.backend}@{self.version}"
            for item in live:
                item.timings.setdefault(self.name, per_item)
                item.versions[self.name] = tag
        return items

    def _guarded(self, item: Item, fn) -> None:
        start = time.perf_counter()
        try:
            fn(item)
        except Reject as exc:
            item.fail(Status.REJECTED, f"{self.name}: {exc}")
        except Exception as exc:  # noqa: BLE001 - one input must not stop the run
            item.fail(Status.ERROR, f"{self.name}: {type(exc).__name__}: {exc}")
        item.timings[self.name] = (time.perf_counter() - start) * 1000.0


def item_zbuffer(item: Item, size: int) -> tuple[np.ndarray, np.ndarray]:
    """`zbuffer` of an item's landmarks, computed once for both the depth and the pseudo-mask
    stage (kept in ``item.scratch``, which is never written out)."""
    zb = item.scratch.get("zbuffer")
    if zb is None or zb[0].shape != (size, size):
        zb = item.scratch["zbuffer"] = zbuffer(item.arrays["lmk"], size)
    return zb
