"""Train one Dense-Face variant on a dataset and record every step's loss terms and time (issue 12).

Why a script and not a bench test: one of the compared variants is the code before the change,
which runs from a copy of that commit (see docs/benchmarks.md for the commands), so each variant
is its own process; `report` prints the table of several runs. Step time is given as CPU time
(the process's, one torch thread) next to wall time, so a shared, loaded machine skews it less.
Same seed, data order and noise in every run; only the model options differ.

    python tests/bench/train_variants.py run --data data/sample-dataset --model '{"zero_conv": false}' \
        --steps 300 --out runs/ungated.json
    python tests/bench/train_variants.py report runs/*.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

WINDOW = 30


def run(data: str, model: dict, steps: int, out: Path, seed: int, lr: float) -> None:
    import torch

    from denseface.train.config import TrainConfig
    from denseface.train.loop import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(data=[data], output_dir=tmp, steps=steps, lr=lr, seed=seed, model=model,
                          num_workers=1, tensorboard=False, progress=False)
        trainer = Trainer(cfg)
        batches = iter(trainer.train_loader())
        rows = []
        for _ in range(steps):
            batch = next(batches)
            start, cpu = time.perf_counter(), time.process_time()
            terms = trainer.train_step(batch)
            rows.append({**{k: float(v) for k, v in terms.items()}, "seconds": time.perf_counter() - start,
                         "cpu_seconds": time.process_time() - cpu})
        trainer.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": model, "threads": torch.get_num_threads(), "steps": rows}))


def report(paths: list[Path]) -> str:
    runs = {p.stem: json.loads(p.read_text()) for p in paths}
    terms = [k for k in next(iter(runs.values()))["steps"][0] if not k.endswith("seconds")]
    head = ("| variant | median step CPU / wall (ms) | "
            + " | ".join(f"{k} first → last {WINDOW}" for k in terms) + " |")
    lines = [head, "|---" * (2 + len(terms)) + "|"]
    for name, r in runs.items():
        steps = r["steps"]
        mean = lambda rows, k: sum(s[k] for s in rows) / len(rows)  # noqa: E731
        cells = [f"{mean(steps[:WINDOW], k):.4g} → {mean(steps[-WINDOW:], k):.4g}" for k in terms]
        cpu, wall = (1000 * statistics.median(s[k] for s in steps) for k in ("cpu_seconds", "seconds"))
        lines.append(f"| {name} | {cpu:.0f} / {wall:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--data", required=True)
    r.add_argument("--model", default="{}", help="DenseFaceConfig overrides as JSON")
    r.add_argument("--steps", type=int, default=300)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--lr", type=float, default=1e-3)  # as `make train`
    r.add_argument("--out", type=Path, required=True)
    rep = sub.add_parser("report")
    rep.add_argument("runs", type=Path, nargs="+")
    args = ap.parse_args()
    if args.cmd == "run":
        run(args.data, json.loads(args.model), args.steps, args.out, args.seed, args.lr)
    else:
        print(report(args.runs))


if __name__ == "__main__":
    main()
