"""The paper preset's whole pipeline on Ray Data with one GPU (`make bench-gpu`, issue 16).

Every model-backed stage of ``configs/paper.yaml`` gets random weights at its published size
in its own file format (`paper_weights`); the build then runs as a user runs it
(``build_dataset`` with ``runner: ray``) on CASIA-sized inputs (`driver_memory.corpus`). The GPU
stage groups share the one GPU by their fractional ``num_gpus`` (one replica of each:
`etl.runner.pool_sizes`), the CPU groups get ``workers`` actors. Reported: images/s over the
whole build and in steady state (`ray_scaling.unit_rates`), the GPU's utilisation and memory
while units were being committed (``nvidia-smi`` sampled every 200 ms), each stage's ms per
image from the build's summary, and the GPU-hours this rate gives for the paper's 2 M images.

Random weights cost what real ones do; the captioners' output layers avoid EOS (`paper_weights`),
so every caption runs to the stage's ``max_new_tokens``: the upper bound of its cost. The same code runs
on the CPU with tiny models and a Ray that counts one GPU it does not have
(``tests/bench/test_gpu_pipeline_cpu.py``): the stages then fall back to the CPU.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from denseface.config import load_config
from denseface.etl.build import build_dataset
from tests.bench.driver_memory import corpus
from tests.bench.gpu_bench import PAPER_IMAGES
from tests.bench.paper_weights import paper_config_file, write_paper_weights
from tests.bench.ray_scaling import unit_rates


class GpuSampler:
    """``nvidia-smi``'s utilisation and memory of GPU 0 every 200 ms, with the time each was read;
    nothing (and no error) where there is no ``nvidia-smi``. The reading thread only parses text."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float, float]] = []  # (time, utilisation %, memory MiB)
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> GpuSampler:
        if shutil.which("nvidia-smi"):
            self._proc = subprocess.Popen(["nvidia-smi", "--id=0", "--query-gpu=utilization.gpu,memory.used",
                                           "--format=csv,noheader,nounits", "-lms", "200"],
                                          stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            util, mem = (float(v) for v in line.split(","))
            self.samples.append((time.time(), util, mem))

    def __exit__(self, *exc: Any) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._thread.join(timeout=5)

    def between(self, start: float, end: float) -> dict[str, float | None]:
        """Mean utilisation and peak memory of the samples read in [start, end]."""
        inside = [(u, m) for t, u, m in self.samples if start <= t <= end]
        if not inside:
            return {"gpu_util_mean": None, "gpu_mem_peak_gib": None}
        return {"gpu_util_mean": sum(u for u, _ in inside) / len(inside),
                "gpu_mem_peak_gib": max(m for _, m in inside) / 1024}


def pipeline_figures(work: Path, full_size: bool, images: int, shard_size: int, workers: int,
                     device: str, skip: int = 1) -> dict[str, Any]:
    """Write the weights, build ``images`` inputs with the paper preset on Ray, and measure it
    (module docstring). Ray must see a GPU: a real one, or one the caller's ``ray.init`` counts."""
    started = time.perf_counter()
    overrides = write_paper_weights(work / "weights", full_size, device)
    weights_s = time.perf_counter() - started
    src = corpus(work, images, per_identity=20)
    out = work / "out"
    cfg = load_config(paper_config_file(overrides, work / "paper-bench.yaml"), sources=[f"casia:{src}"],
                      out=out, runner="ray", workers=workers, shard_size=shard_size)
    import ray

    started_ray = not ray.is_initialized()
    try:
        with GpuSampler() as gpu:
            result = build_dataset(cfg, progress=False)
    finally:
        if started_ray:  # the build's own Ray: its actors let go of the GPU before the next bench
            ray.shutdown()
    summary = json.loads((out / "run_summary.json").read_text())
    try:
        steady = unit_rates(out, skip)["steady"]
    except ValueError:  # the units after the start-up came in one burst: no steady rate to tell
        steady = None
    commits = sorted(p.stat().st_mtime for p in (out / "stats").glob("*.json"))
    return {"images": result.inputs, "accepted": result.accepted, "weights_s": weights_s,
            "whole_per_s": summary["inputs"] / summary["seconds"], "steady_per_s": steady,
            **gpu.between(commits[min(skip, len(commits) - 1)], commits[-1]),
            "ms_per_image": summary["ms_per_image"],
            "num_gpus": {name: conf.num_gpus for name, conf in cfg.stages.items() if conf.num_gpus > 0}}


def pipeline_report(fig: dict[str, Any], device_name: str, workers: int) -> str:
    util = "n/a (no nvidia-smi)" if fig["gpu_util_mean"] is None else f"{fig['gpu_util_mean']:.0f} %"
    mem = "n/a" if fig["gpu_mem_peak_gib"] is None else f"{fig['gpu_mem_peak_gib']:.1f} GiB"
    rate = fig["steady_per_s"] or fig["whole_per_s"]
    lines = [f"{device_name}: the paper preset's whole pipeline on Ray Data, one GPU shared by "
             + ", ".join(f"{k} {v:g}" for k, v in fig["num_gpus"].items()) + f"; {workers} CPU workers",
             f"  weights written in {fig['weights_s']:.0f} s; {fig['images']} inputs, {fig['accepted']} accepted",
             f"  images/s: {fig['whole_per_s']:.2f} whole, "
             + ("n/a" if fig["steady_per_s"] is None else f"{fig['steady_per_s']:.2f}")
             + f" steady; GPU utilisation {util} (mean while units were committed), memory peak {mem}",
             f"  GPU-hours to annotate {PAPER_IMAGES / 1e6:g} M images at "
             f"{'the steady' if fig['steady_per_s'] else 'the whole'} rate: {PAPER_IMAGES / rate / 3600:,.0f}",
             "  ms per image by stage: " + ", ".join(f"{k} {v:.1f}" for k, v in fig["ms_per_image"].items())]
    return "\n".join(lines)
