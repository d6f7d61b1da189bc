"""A dataset build: read sources, plan units, skip finished ones, run stages, write shards.

The invariant checked at the end: every planned input has exactly one manifest row, so
inputs == accepted + rejected (+ errors), whatever happened to the images.
"""
from __future__ import annotations

import errno
import json
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from tqdm import tqdm

from denseface.annotators.base import Item
from denseface.config import BuildConfig
from denseface.errors import OutputError, UserError
from denseface.etl.lock import output_lock
from denseface.etl.plan import Unit, make_plan
from denseface.etl.readers import Record, parse_source, read_source
from denseface.etl.runner import LocalRunner, RayRunner, UnitJob
from denseface.etl.stages import build_fingerprint, build_stages, manifest_schema
from denseface.etl.unit_writer import UnitWriter
from denseface.shards import schema
from denseface.shards.verify import check_unit, read_plan
from denseface.shards.writer import own_temporaries, remove_unit, unit_paths, units_on_disk, write_json


def new_item(key: str, unit: int, rec) -> Item:
    item = Item(key=key, identity=rec.identity, source=rec.source, source_path=rec.source_path, unit=unit,
                fields=dict(rec.attrs))
    if rec.error:
        item.fail(schema.Status.REJECTED, rec.error)
    return item


def remove_stale_temporaries(root: Path) -> int:
    """Half-written files of a killed run: only the build's own temporary names, where it
    writes them (`own_temporaries`); the lock guarantees no other build is writing them."""
    stale = own_temporaries(root)
    for p in stale:
        p.unlink()
    if stale:
        print(f"removed {len(stale)} stale temporary file(s) of an interrupted run", file=sys.stderr)
    return len(stale)


@dataclass
class BuildResult:
    inputs: int
    accepted: int
    rejected: int
    errors: int
    units_total: int
    units_written: int
    units_skipped: int
    seconds: float
    reasons: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # seen by a reader, not an input: reason -> count
    seen: int = 0  # everything the readers saw: inputs + skipped

    @property
    def balanced(self) -> bool:
        return (self.inputs == self.accepted + self.rejected + self.errors
                and self.seen == self.inputs + sum(self.skipped.values()))

    def line(self) -> str:
        rate = (self.inputs / self.seconds) if self.seconds else 0.0
        return (f"seen={self.seen} skipped={sum(self.skipped.values())} inputs={self.inputs} "
                f"accepted={self.accepted} rejected={self.rejected} errors={self.errors} "
                f"(seen == inputs + skipped, inputs == accepted + rejected + errors: "
                f"{'yes' if self.balanced else 'NO'}) | units "
                f"written={self.units_written} skipped={self.units_skipped} of {self.units_total} | "
                f"{self.seconds:.1f}s, {rate:.2f} inputs/s")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "denseface": metadata.version("dense-face")}
    for pkg in ("mediapipe", "ray", "numpy", "opencv-contrib-python", "pillow", "pyarrow", "webdataset", "torch"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def unique_sources(specs: list[str]) -> list[str]:
    """The same ``KIND:PATH`` given twice is read once (said on stderr)."""
    seen: dict[tuple[str, Path], str] = {}
    for spec in specs:
        key = parse_source(spec)
        if key in seen:
            print(f"note: --source {spec} repeats {seen[key]}; read once", file=sys.stderr)
        else:
            seen[key] = spec
    return list(seen.values())


def read_all(specs: list[str]) -> tuple[list[Record], dict[str, int], int]:
    """(input records, skipped-entry counts per reason, entries seen) over all sources."""
    records: list[Record] = []
    skipped: Counter[str] = Counter()
    seen = 0
    for spec in specs:
        for rec in read_source(spec):
            seen += 1
            if rec.skip:
                skipped[rec.skip] += 1
            else:
                records.append(rec)
    return records, dict(sorted(skipped.items())), seen


# A failed write for one of these reasons is the user's to fix (permissions, mount, space).
_OUTPUT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EEXIST,
                  errno.ENOTDIR, errno.EISDIR}


def build_dataset(cfg: BuildConfig, progress: bool = True) -> BuildResult:
    if cfg.out is None or not cfg.sources:
        raise UserError("a build needs at least one --source and an --out folder")
    started = time.perf_counter()
    root = Path(cfg.out)
    specs = unique_sources(cfg.sources)
    stages = build_stages(cfg)  # fails on missing weights before anything is read or written
    build_fp = build_fingerprint(cfg, stages)
    records, skipped, seen = read_all(specs)
    units = make_plan(records, cfg.shard_size)
    plan = {"n_units": len(units), "n_inputs": len(records), "shard_size": cfg.shard_size,
            "build_fingerprint": build_fp, "fingerprints": [u.fingerprint for u in units]}
    if root.is_dir() and not os.access(root, os.W_OK | os.X_OK):
        return _complete_read_only(root, units, build_fp, skipped, seen, started)
    try:
        root.mkdir(parents=True, exist_ok=True)
        with output_lock(root):
            return _build_locked(cfg, root, stages, build_fp, units, plan, skipped, seen, started, progress)
    except OSError as exc:
        if exc.errno not in _OUTPUT_ERRNOS:
            raise
        raise OutputError(f"cannot write {schema.printable(str(exc.filename or root))}: {exc.strerror}") from None


def _complete_read_only(root: Path, units: list[Unit], build_fp: str, skipped: dict[str, int], seen: int,
                        started: float) -> BuildResult:
    """A finished dataset on a read-only mount: report it, write nothing; else a clear error."""
    todo = [u.index for u in units if check_unit(root, u.index, u.fingerprint, build_fp)]
    if todo:
        raise OutputError(f"output folder {root} is not writable and {len(todo)} of {len(units)} unit(s) "
                          f"need writing (first: {schema.shard_name(todo[0])})")
    print(f"note: {root} is read-only and complete: nothing written", file=sys.stderr)
    stats = [json.loads(unit_paths(root, u.index)["stats"].read_text()) for u in units]
    return _summarise(stats, len(units), 0, len(units), time.perf_counter() - started, skipped, seen)


def _build_locked(cfg: BuildConfig, root: Path, stages, build_fp: str, units: list[Unit], plan: dict[str, Any],
                  skipped: dict[str, int], seen: int, started: float, progress: bool) -> BuildResult:
    names = [s.name for s in stages]
    remove_stale_temporaries(root)
    if read_plan(root)[0] != plan:
        write_json(root / "plan.json", plan)
    if stale := sorted(u for u in units_on_disk(root) if u >= len(units)):
        for unit in stale:  # outputs of an earlier build with another plan: its inputs are in this plan's units
            remove_unit(root, unit)
        print(f"removed {len(stale)} unit(s) beyond this plan's {len(units)}, left by an earlier build "
              f"(first: {schema.shard_name(stale[0])})", file=sys.stderr)
    todo = [u for u in units if check_unit(root, u.index, u.fingerprint, build_fp)]
    writer = UnitWriter(root.resolve(), tuple(names), manifest_schema(stages), build_fp, cfg.jpeg_quality)
    if cfg.runner == "ray":
        runner: LocalRunner | RayRunner = RayRunner(stages, writer, cfg.workers)
        if 0 < len(todo) < cfg.workers:
            print(f"note: {len(todo)} unit(s) to write for {cfg.workers} workers: a unit is one worker's task, so "
                  f"{cfg.workers - len(todo)} will idle; a smaller --shard-size spreads the inputs", file=sys.stderr)
    else:
        runner = LocalRunner(stages, writer)
    written: set[int] = set()
    total = sum(len(u.inputs) for u in todo)
    with tqdm(total=total, desc="build-dataset", unit="img", disable=not progress or not total,
              file=sys.stderr) as bar:
        # Waves of units bound what the driver holds (item stubs) on a two-million-image run;
        # each wave is one execution of the runner.
        for start in range(0, len(todo), cfg.wave_units):
            jobs = [UnitJob(u.index, u.fingerprint, [new_item(p.key, p.unit, p.record) for p in u.inputs])
                    for u in todo[start:start + cfg.wave_units]]
            written.update(stats["unit"] for stats in runner.run(jobs, bar.update))
    remove_stale_temporaries(root)  # a Ray worker killed while writing (Ray ran its unit again elsewhere)
    if missing := sorted({u.index for u in todo} - written):
        raise RuntimeError(f"units {missing} were not written")
    stats = [json.loads(unit_paths(root, u.index)["stats"].read_text()) for u in units]
    result = _summarise(stats, len(units), len(written), len(units) - len(todo), time.perf_counter() - started,
                        skipped, seen)
    write_json(root / "run_summary.json", {
        **asdict(result), "balanced": result.balanced, "finished": datetime.now(timezone.utc).isoformat(),
        "config": cfg.model_dump(mode="json"), "stages": [f"{s.name}:{s.backend}@{s.version}" for s in stages],
        "versions": _versions(), "ms_per_image": _ms_per_image(stats, names)})
    return result


def _summarise(stats: list[dict[str, Any]], n_units: int, written: int, units_skipped: int,
               seconds: float, skipped: dict[str, int], seen: int) -> BuildResult:
    """Counts over every unit of the plan (written now or skipped as done), from their stats."""
    reasons: Counter[str] = Counter()
    for s in stats:
        reasons.update(s["reasons"])
    return BuildResult(inputs=sum(s["n_inputs"] for s in stats), accepted=sum(s["n_ok"] for s in stats),
                       rejected=sum(s["n_rejected"] for s in stats), errors=sum(s["n_error"] for s in stats),
                       units_total=n_units, units_written=written, units_skipped=units_skipped,
                       seconds=seconds, reasons=dict(sorted(reasons.items())), skipped=skipped, seen=seen)


def _ms_per_image(stats: list[dict[str, Any]], names: list[str]) -> dict[str, float]:
    """Mean time of each stage over the inputs that reached it (from the unit stats)."""
    total = {n: sum(s["ms_total"].get(n, 0.0) for s in stats) for n in names}
    timed = {n: sum(s.get("n_timed", {}).get(n, 0) for s in stats) for n in names}
    return {n: round(total[n] / max(1, timed[n]), 3) for n in names}
