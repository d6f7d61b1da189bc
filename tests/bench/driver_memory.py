"""The Ray driver's memory on a large synthetic build (issue 16).

``python -m tests.bench.driver_memory --images 20000 --shard-size 1000 --workers 2`` makes
``--images`` CASIA-sized inputs (``casia_corpus``; identities of ``--per-identity`` images),
runs ``denseface build-dataset --runner ray`` on them in a subprocess and samples that
process's memory (the driver's own) every ``--every`` seconds from ``/proc``, and that of its
stage workers (Ray's ``MapWorker`` processes, which write the units). The baseline is the
driver's RSS when its progress bar appears: imports, stage set-up, reading and planning done,
Ray not yet started. Reported: the driver's peak RSS (and its anonymous part, the heap) above
that baseline, the largest worker's peak RSS, images/s, and the tar bytes per accepted sample,
which with the shard size gives the workers' bound (a unit of packed samples each).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from denseface.etl.readers import read_casia
from denseface.etl.sample_data import ensure_sample
from tests.bench.casia_corpus import casia_sized, replicate

MB = 1 << 20


def corpus(work: Path, images: int, per_identity: int) -> Path:
    """``images`` CASIA-sized inputs under ``work``, cut once from the sample's single-face photos."""
    crops = work / "crops"
    if not crops.is_dir():
        photos = [r.source_path for r in read_casia(ensure_sample()) if r.identity != "group_photo"]
        casia_sized([Path(p) for p in photos], crops)
    return replicate(sorted(crops.rglob("*.jpg")), work / f"casia-{images}-{per_identity}", images, per_identity)


def _memory(pid: int) -> dict[str, int] | None:
    """VmRSS, RssAnon and RssShmem of ``pid`` in bytes (None once it has exited)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "RssAnon", "RssShmem") if k in fields}


def _worker_pids(driver: int) -> list[int]:
    """Stage workers under the driver (its local Ray's raylet starts them)."""
    try:
        children = psutil.Process(driver).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for child in children:
        with contextlib.suppress(psutil.Error):
            if "MapWorker" in " ".join(child.cmdline()):
                found.append(child.pid)
    return found


def build_command(src: Path, out: Path, runner: str, workers: int, shard_size: int) -> list[str]:
    """``denseface build-dataset`` of the CASIA-style folder ``src`` into ``out``, from this venv."""
    return [str(Path(sys.executable).parent / "denseface"), "build-dataset", "--source", f"casia:{src}",
            "--out", str(out), "--runner", runner, "--workers", str(workers), "--shard-size", str(shard_size)]


def measure(src: Path, out: Path, workers: int, shard_size: int, every: float) -> dict:
    """Run one Ray build of ``src`` into a fresh ``out``, sampling the driver's and its workers' memory."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = build_command(src, out, "ray", workers, shard_size)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    bar_seen = threading.Event()
    err = bytearray()

    def read_stderr() -> None:  # the bar is tqdm's, drawn with carriage returns: read raw chunks
        while chunk := os.read(proc.stderr.fileno(), 65536):
            err.extend(chunk)
            if b"build-dataset" in err:
                bar_seen.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    base, peak, samples, worker_peak = None, {}, [], 0
    while (mem := _memory(proc.pid)) is not None and proc.poll() is None:
        t = time.perf_counter() - started
        if base is None and bar_seen.is_set():
            base = mem
        if base is not None:
            samples.append((round(t, 1), mem["VmRSS"] // MB))
            peak = {k: max(v, peak.get(k, 0)) for k, v in mem.items()}
            for pid in _worker_pids(proc.pid):
                worker_peak = max(worker_peak, (_memory(pid) or {}).get("VmRSS", 0))
        time.sleep(every)
    stdout = proc.communicate()[0].decode()
    reader.join()
    wall = time.perf_counter() - started
    if proc.returncode != 0 or base is None:
        raise RuntimeError(f"build failed ({proc.returncode}): {stdout}\n{err.decode(errors='replace')[-3000:]}")
    summary = json.loads((out / "run_summary.json").read_text())
    tar_bytes = sum(p.stat().st_size for p in out.glob("shard-*.tar"))
    t_peak = next(t for t, rss in samples if rss == peak["VmRSS"] // MB)
    return {"images": summary["inputs"], "accepted": summary["accepted"], "workers": workers,
            "shard_size": shard_size, "build_s": round(summary["seconds"], 1), "wall_s": round(wall, 1),
            "images_per_s": round(summary["inputs"] / summary["seconds"], 2),
            "base_rss_mb": base["VmRSS"] // MB, "peak_rss_mb": peak["VmRSS"] // MB,
            "peak_above_base_mb": (peak["VmRSS"] - base["VmRSS"]) // MB,
            "peak_anon_above_base_mb": (peak["RssAnon"] - base["RssAnon"]) // MB,
            "peak_shmem_mb": peak.get("RssShmem", 0) // MB, "peak_at_s": t_peak,
            "worker_peak_rss_mb": worker_peak // MB,
            "tar_bytes_per_accepted": round(tar_bytes / max(1, summary["accepted"])),
            "units": summary["units_total"], "samples": samples}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--per-identity", type=int, default=20)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--workers", type=int, nargs="+", default=[2])
    ap.add_argument("--every", type=float, default=0.2, help="seconds between memory samples")
    ap.add_argument("--work", type=Path, default=Path("/tmp/denseface-driver-bench"))
    ap.add_argument("--trace", type=Path, help="write each run's (seconds, RSS MB) samples here as JSON")
    args = ap.parse_args(argv)
    src = corpus(args.work, args.images, args.per_identity)
    runs = [measure(src, args.work / f"out-w{w}", w, args.shard_size, args.every) for w in args.workers]
    if args.trace:
        args.trace.write_text(json.dumps([r["samples"] for r in runs]))
    for r in runs:
        print(json.dumps({k: v for k, v in r.items() if k != "samples"}))
    return {"runs": runs}


if __name__ == "__main__":
    main()
