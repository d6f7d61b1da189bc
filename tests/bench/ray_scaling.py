"""Ray's scaling from one worker to two, next to what two processes get from this machine at all
(issue 16).

``python -m tests.bench.ray_scaling --images 3000 --shard-size 100`` builds the same CASIA-sized
inputs (`driver_memory.corpus`) several ways, one after another, each into a fresh folder:

- ``local``: ``--runner local``, one process, no Ray;
- ``local x2``: two such processes at once, each into its own folder: two workers that share
  nothing, the most any two-worker scheme can get from the machine;
- ``ray 1`` / ``ray 2``: one or two Ray workers. With one, the driver and Ray's services still
  have the other core.

Each run reports its whole rate (inputs / the build's seconds, start-up included), its steady
rate and the cores it kept busy (``/proc/stat``). The steady rate counts the units committed
after the ``--skip``-th (a unit's stats json is written last) over the time since: it leaves out
the start-up (Ray's services, actors importing mediapipe, dlib and torch, the first unit), about
10 s here, which a two-million-image build pays once. The 2-core box is a VM whose speed drifts
by ±10 % from minute to minute, so ``--rounds`` repeats the whole list (interleaved) and the
figures are medians. The shards of every run must be the same.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from tests.bench.driver_memory import build_command, corpus

BURST_S = 0.2
RUNS = {"local": ("local", 1, 1), "local x2": ("local", 1, 2), "ray 1": ("ray", 1, 1),
        "ray 2": ("ray", 2, 1)}  # runner, workers, processes at once
RATIOS = {"ray 2 / ray 1 (issue 16: >= 1.8)": ("ray 2", "ray 1"),
          "local x2 / local (two processes that share nothing)": ("local x2", "local"),
          "ray 2 / local x2 (Ray's share of what two processes get)": ("ray 2", "local x2"),
          "ray 1 / local": ("ray 1", "local")}


def _busy_ticks() -> tuple[int, int]:
    """(busy, all) CPU ticks of the machine so far."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # idle and iowait are not busy


def unit_rates(out: Path, skip: int) -> dict:
    """Whole and steady images/s of a finished build in ``out`` (module docstring), and its
    shards' SHA-256 in unit order, as the build recorded them in the units' stats."""
    summary = json.loads((out / "run_summary.json").read_text())
    stats = [(p.stat().st_mtime, json.loads(p.read_text())) for p in (out / "stats").glob("*.json")]
    units = sorted((t, s["n_inputs"]) for t, s in stats)
    # Units committed within BURST_S of the one that starts the clock (two workers finishing
    # together) belong to its burst, not to the time measured.
    start = units[min(skip, len(units) - 1)][0]
    after = [(t, n) for t, n in units if t > start + BURST_S]
    if len(after) < 2:
        raise ValueError(f"{out}: {len(units)} units, too few after the first {skip} for a steady rate")
    return {"inputs": summary["inputs"], "accepted": summary["accepted"],
            "whole": summary["inputs"] / summary["seconds"],
            "steady": sum(n for _, n in after) / (after[-1][0] - start),
            "shards": [s["tar_sha256"] for _, s in sorted(stats, key=lambda ts: ts[1]["unit"])]}


def measure(name: str, src: Path, work: Path, shard_size: int, skip: int) -> dict:
    runner, workers, processes = RUNS[name]
    outs = [work / f"out-{name.replace(' ', '').replace(',', '-')}-{i}" for i in range(processes)]
    for out in outs:
        shutil.rmtree(out, ignore_errors=True)
    busy0, all0, started = *_busy_ticks(), time.perf_counter()
    # Output goes to files: a pipe left unread while the other process is awaited fills up with
    # progress-bar updates and stalls its writer, which would slow the very runs being timed.
    logs = [out.with_name(f"{out.name}.log") for out in outs]
    with contextlib.ExitStack() as stack:
        procs = [subprocess.Popen(build_command(src, out, runner, workers, shard_size),
                                  stdout=stack.enter_context(log.open("wb")), stderr=subprocess.STDOUT)
                 for out, log in zip(outs, logs)]
        for p in procs:
            p.wait()
    busy1, all1, wall = *_busy_ticks(), time.perf_counter() - started
    if failed := [log for p, log in zip(procs, logs) if p.returncode != 0]:
        raise RuntimeError(f"{name}: build failed:\n{failed[0].read_text(errors='replace')[-3000:]}")
    rates = [unit_rates(out, skip) for out in outs]
    return {"run": name, "images": sum(r["inputs"] for r in rates), "accepted": sum(r["accepted"] for r in rates),
            "whole_per_s": round(sum(r["whole"] for r in rates), 1),
            "steady_per_s": round(sum(r["steady"] for r in rates), 1),
            "cores_busy": round((busy1 - busy0) / (all1 - all0) * os.cpu_count(), 2), "wall_s": round(wall, 1),
            "shards": [tuple(r["shards"]) for r in rates]}


def _median(runs: list[dict]) -> dict:
    keys = ("whole_per_s", "steady_per_s", "cores_busy", "wall_s")
    return {**runs[0], **{k: round(statistics.median(r[k] for r in runs), 2) for k in keys},
            "steady_each": [r["steady_per_s"] for r in runs], "shards": [s for r in runs for s in r["shards"]]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--per-identity", type=int, default=20)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--skip", type=int, default=5, help="units left out of the steady rate (start-up)")
    ap.add_argument("--runs", nargs="+", choices=list(RUNS), default=list(RUNS))
    ap.add_argument("--rounds", type=int, default=1, help="repeat the list, interleaved; report medians")
    ap.add_argument("--work", type=Path, default=Path("/tmp/denseface-ray-scaling"))
    args = ap.parse_args(argv)
    src = corpus(args.work, args.images, args.per_identity)
    each: dict[str, list[dict]] = {name: [] for name in args.runs}
    for round_ in range(args.rounds):
        for name in args.runs:
            each[name].append(measure(name, src, args.work, args.shard_size, args.skip))
            print(json.dumps({"round": round_ + 1, **{k: v for k, v in each[name][-1].items() if k != "shards"}}),
                  flush=True)
    runs = {name: _median(r) for name, r in each.items()}
    ratios = {label: {rate: round(runs[a][rate] / runs[b][rate], 2) for rate in ("steady_per_s", "whole_per_s")}
              for label, (a, b) in RATIOS.items() if a in runs and b in runs}
    for name, r in runs.items():
        print(f"{name}: median of {args.rounds}: steady {r['steady_per_s']:.1f} {r['steady_each']}, "
              f"whole {r['whole_per_s']:.1f} images/s, {r['cores_busy']:.2f} cores busy")
    for label, r in ratios.items():
        print(f"{label}: steady {r['steady_per_s']:.2f}, whole {r['whole_per_s']:.2f}")
    return {"runs": runs, "ratios": ratios}


if __name__ == "__main__":
    main()
