"""``denseface train``: argument parsing (light: no torch import until the command runs).

`add_train_parser` adds the subcommand to ``denseface``'s subparsers; flags override a YAML
``--config`` (a `TrainConfig` mapping), which overrides the defaults.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from denseface.errors import UserError


def add_train_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    t = sub.add_parser("train", help="train Dense-Face on shards (tiny offline model, or SD 2.1 with --pretrained)")
    t.add_argument("--data", action="append", metavar="PATH|URL",
                   help="dataset folder, shard pattern (shard-{000000..000009}.tar) or pipe:/fsspec URL; repeatable "
                        "(default data/sample-dataset)")
    t.add_argument("--config", type=Path, help="YAML TrainConfig; flags override it")
    t.add_argument("--pretrained", help="SD 2.1: hub id[@revision] (e.g. stabilityai/stable-diffusion-2-1-base) or "
                   "diffusers folder (default: the tiny offline model)")
    t.add_argument("--out", dest="output_dir", type=Path, help="run folder: checkpoints, tensorboard, losses.jsonl")
    t.add_argument("--resume", help="checkpoint folder, or 'latest' (of --out)")
    t.add_argument("--steps", type=int)
    t.add_argument("--batch-size", type=int, help="per process (default 12)")
    t.add_argument("--lr", type=float, help="AdamW learning rate (default 5e-6)")
    t.add_argument("--resolution", type=int, help="training resolution (default: the model's, 512 / 64 tiny)")
    t.add_argument("--workers", dest="num_workers", type=int, help="DataLoader workers per process")
    t.add_argument("--mixed-precision", choices=["auto", "no", "fp16", "bf16"])
    t.add_argument("--gradient-checkpointing", action="store_const", const=True)
    t.add_argument("--cpu", action="store_const", const=True, help="train on the CPU even where a GPU exists")
    t.add_argument("--caption-dropout", type=float)
    t.add_argument("--lambda-landmarks", type=float)
    t.add_argument("--lambda-mask", type=float)
    t.add_argument("--lambda-depth", type=float)
    t.add_argument("--seed", type=int)
    t.add_argument("--log-every", type=int)
    t.add_argument("--checkpoint-every", type=int)
    t.add_argument("--validate-every", type=int)
    t.add_argument("--synthetic", action="store_true",
                   help="first write a synthetic dataset (every member) into the single --data folder if it has "
                        "no shards: a demo that needs no annotation models")
    t.add_argument("--skip-bad-shards", dest="bad_shards", action="store_const", const="skip",
                   help="leave out (and count) unreadable shards instead of stopping with their name")
    t.add_argument("--no-tensorboard", dest="tensorboard", action="store_const", const=False)
    t.add_argument("--no-progress", dest="progress", action="store_const", const=False)
    t.set_defaults(func=run_train)
    return t


FIELDS = ("data", "bad_shards", "pretrained", "output_dir", "resume", "steps", "batch_size", "lr", "resolution", "num_workers",
          "mixed_precision", "cpu", "gradient_checkpointing", "caption_dropout", "lambda_landmarks", "lambda_mask",
          "lambda_depth", "seed", "log_every", "checkpoint_every", "validate_every", "tensorboard", "progress")


def config_from_args(args: argparse.Namespace):
    from denseface.train.config import load_train_config

    return load_train_config(args.config, **{f: getattr(args, f, None) for f in FIELDS})


def run_train(args: argparse.Namespace) -> int:
    from denseface.model_refs import require
    from denseface.weights_check import sd_needs

    cfg = config_from_args(args)
    require(sd_needs(cfg.pretrained))  # a missing SD fails here, before any data is touched
    if args.synthetic:
        from denseface.shards.reader import shard_paths
        from denseface.train.synthetic import publish_synthetic_dataset

        if len(cfg.data) != 1:
            raise UserError("--synthetic needs exactly one --data folder")
        root = Path(cfg.data[0])
        if not shard_paths(root) and publish_synthetic_dataset(root, identities=4, per_identity=6, shards=2):
            print(f"wrote a synthetic dataset to {root}")
    from denseface.train.loop import train

    result = train(cfg)
    if os.environ.get("RANK", "0") == "0":  # every process returns the same (rank-averaged) losses
        print(result.summary())
    return 0
