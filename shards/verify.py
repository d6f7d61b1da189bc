"""Check a dataset: every unit's tar, manifest and stats agree, nothing half-written.

Used by ``denseface shards verify`` and by resume (a unit is skipped only if it verifies).
"""
from __future__ import annotations

import json
import tarfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from denseface.shards.reader import iter_members
from denseface.shards.schema import REQUIRED_MEMBERS, Status, shard_name
from denseface.shards.writer import file_sha256, own_temporaries, unit_paths, units_on_disk


def tar_members(path: str | Path) -> dict[str, set[str]]:
    """key -> member extensions of a local tar (headers only); raises on a truncated or unsafe tar."""
    members: dict[str, set[str]] = defaultdict(set)
    for key, ext, _ in iter_members(path, read=lambda key, ext: False):
        members[key].add(ext)
    return members


def check_unit(root: Path, unit: int, fingerprint: str | None = None, build_fp: str | None = None,
               checksums: bool = True) -> list[str]:
    """Problems of one unit (empty = complete and consistent). ``checksums`` re-reads the tar
    and manifest against the SHA-256 recorded when they were written (about 2 s per GB here:
    docs/benchmarks.md), which finds bytes changed in place at an unchanged size."""
    paths = unit_paths(root, unit)
    if not paths["stats"].exists():
        return ["not written (no stats file)"]
    try:
        stats = json.loads(paths["stats"].read_text())
    except (OSError, ValueError) as exc:
        return [f"stats unreadable: {exc}"]
    problems: list[str] = []
    if fingerprint is not None and stats.get("fingerprint") != fingerprint:
        problems.append("inputs differ from the plan (fingerprint mismatch)")
    if build_fp is not None and stats.get("build_fingerprint") != build_fp:
        problems.append("written under another configuration (build fingerprint mismatch)")
    for what in ("tar", "manifest"):
        if not paths[what].exists():
            problems.append(f"{what} missing: {paths[what].name}")
    if problems:
        return problems
    if paths["tar"].stat().st_size != stats.get("tar_bytes"):
        problems.append(f"tar size {paths['tar'].stat().st_size} != recorded {stats.get('tar_bytes')} (truncated?)")
    if checksums:
        for what in ("tar", "manifest"):
            recorded = stats.get(f"{what}_sha256")
            if recorded is None:
                problems.append(f"no {what} checksum recorded (written by an older version)")
            elif file_sha256(paths[what]) != recorded:
                problems.append(f"{what} content changed since it was written (SHA-256 mismatch)")
    try:
        members = tar_members(paths["tar"])
    except (tarfile.TarError, ValueError, OSError) as exc:
        return problems + [f"tar unreadable: {exc}"]
    try:
        table = pq.read_table(paths["manifest"], columns=["key", "status"])
    except Exception as exc:  # noqa: BLE001 - any parquet failure is a broken manifest
        return problems + [f"manifest unreadable: {exc}"]
    keys, statuses = table.column("key").to_pylist(), table.column("status").to_pylist()
    if len(keys) != stats.get("n_inputs"):
        problems.append(f"manifest has {len(keys)} rows, stats say {stats.get('n_inputs')} inputs")
    if len(set(keys)) != len(keys):
        problems.append("duplicate keys in manifest")
    if bad := set(statuses) - set(Status.ALL):
        problems.append(f"unknown statuses {sorted(bad)}")
    ok_keys = {k for k, s in zip(keys, statuses) if s == Status.OK}
    if ok_keys != set(members):
        problems.append(f"tar keys != manifest ok keys ({len(members)} vs {len(ok_keys)})")
    expected = set(stats.get("members", REQUIRED_MEMBERS))
    incomplete = [k for k, exts in members.items() if not expected <= exts]
    if incomplete:
        problems.append(f"{len(incomplete)} samples miss members, e.g. {incomplete[0]}")
    return problems


@dataclass
class VerifyReport:
    units: int = 0
    inputs: int = 0
    accepted: int = 0
    problems: dict[str, list[str]] = field(default_factory=dict)  # file/unit -> problems

    @property
    def ok(self) -> bool:
        return not self.problems


def read_plan(root: Path) -> tuple[dict | None, str]:
    """``plan.json`` of a dataset, or None and why it cannot be used."""
    path = root / "plan.json"
    if not path.exists():
        return None, ""
    try:
        plan = json.loads(path.read_text())
        if len(plan["fingerprints"]) != plan["n_units"] or not isinstance(plan["build_fingerprint"], str):
            raise ValueError("fingerprints do not match n_units")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return None, f"unreadable ({type(exc).__name__}: {exc})"
    return plan, ""


def verify_dataset(root: Path, checksums: bool = True) -> VerifyReport:
    """All units named by stats files or tars, plus the build's own stray temporary files."""
    report = VerifyReport()
    for tmp in own_temporaries(root):
        report.problems[str(tmp.relative_to(root))] = ["stale temporary file (interrupted write)"]
    plan, problem = read_plan(root)
    if problem:
        report.problems["plan.json"] = [problem]
    units = units_on_disk(root) | set(range(plan["n_units"] if plan else 0))
    for unit in sorted(units):
        name = shard_name(unit)
        report.units += 1
        if plan and unit >= plan["n_units"]:
            report.problems[name] = [f"not in the plan ({plan['n_units']} units): left by an earlier build"]
            continue
        fp = plan["fingerprints"][unit] if plan else None
        problems = check_unit(root, unit, fingerprint=fp, build_fp=plan["build_fingerprint"] if plan else None,
                              checksums=checksums)
        if problems:
            report.problems[name] = problems
            continue
        stats = json.loads(unit_paths(root, unit)["stats"].read_text())
        report.inputs += stats["n_inputs"]
        report.accepted += stats["n_ok"]
    return report
