"""One rank of `test_train_ddp` (run under ``accelerate launch``, 2 CPU processes over gloo).

Usage: tests/train/ddp_worker.py SPEC_JSON OUT_DIR (SPEC: {config: TrainConfig fields, epoch_samples}).
Writes ``OUT_DIR/rank{r}.json`` (world size, the keys of the first epoch from this rank's training
loader, per-step losses of a full run and of a run resumed from its step-2 checkpoint) and
``OUT_DIR/params-rank{r}.pt`` (the trained parameters after the full run).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from denseface.train.config import TrainConfig
from denseface.train.loop import Trainer, train


def main(config: Path, out: Path) -> None:
    spec = json.loads(config.read_text())
    base = spec["config"]
    trainer = Trainer(TrainConfig(**base, output_dir=out / "full"))
    acc = trainer.accelerator
    epoch_steps = spec["epoch_samples"] // (base["batch_size"] * acc.num_processes)
    batches = iter(trainer.train_loader())
    keys = [k for _ in range(epoch_steps) for k in next(batches)["key"]]
    del batches
    full = trainer.train()
    params = torch.cat([p.detach().flatten() for p in trainer.params])
    trainer.close()
    resumed = train(TrainConfig(**base, output_dir=out / "resumed", resume=str(full.output_dir / "checkpoints" /
                                                                                  "step-000002")))
    rank = acc.process_index
    torch.save(params, out / f"params-rank{rank}.pt")
    (out / f"rank{rank}.json").write_text(json.dumps({
        "world": acc.num_processes, "distributed": str(acc.distributed_type), "keys": keys,
        "full": full.losses, "resumed": resumed.losses, "resumed_from": resumed.start_step}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
