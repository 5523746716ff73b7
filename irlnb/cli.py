"""Command line: `irlnb check`, `irlnb run`, `irlnb fetch`, `irlnb bench`, `irlnb regress`.

Every expected failure (bad params, missing file, unreachable hub, corrupted artifact, refused
overwrite) ends with one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import sys


def _expected_errors() -> tuple[type[BaseException], ...]:
    from irlnb.assets import AssetError
    from irlnb.config import ConfigError
    from irlnb.curate import CurateError
    from irlnb.runner import RunError
    from irlnb.sources import SourceError
    from irlnb.stages import StageError

    return ConfigError, RunError, StageError, SourceError, AssetError, CurateError, FileNotFoundError


def cmd_check(args) -> int:
    from irlnb.config import describe_settings, load_config
    from irlnb.stages import STAGES, check_notebook_parameters

    if args.describe:
        print(describe_settings())
        return 0
    if not args.params:
        raise SystemExit("irlnb check: give a params file (or --describe)")
    config = load_config(args.params)
    for stage in STAGES:
        check_notebook_parameters(stage)
    print(f"{args.params}: ok (run '{config.run.name}', {len(STAGES)} stages)")
    return 0


def cmd_run(args) -> int:
    from irlnb.config import load_config
    from irlnb.runner import run

    config = load_config(args.params)
    run(config, only=args.only, force=args.force, runs_dir=args.runs_dir)
    return 0


def cmd_fetch(args) -> int:
    from irlnb.assets import cache_dir, fetch_all
    from irlnb.models import embedded_policy_dir

    for name, path in fetch_all().items():
        print(f"{name}: {path}")
    print(f"smollm2-135m-instruct: {embedded_policy_dir('smollm2-135m-instruct')}")
    print(f"cache: {cache_dir()}")
    return 0


def cmd_bench(args) -> int:
    from irlnb.bench import run_bench

    run_bench(threads=args.threads, out=args.out, rlhf_threads=args.rlhf_threads)
    return 0


def cmd_regress(args) -> int:
    from pathlib import Path

    from irlnb.config import load_config
    from irlnb.regress import REFERENCE_DIR, REGRESS_RUNS_DIR, RegressError, record_reference, regress
    from irlnb.stages import REPO_ROOT

    config = load_config(args.params)
    reference_dir = Path(args.reference_dir) if args.reference_dir else REFERENCE_DIR
    try:
        if args.record:
            run_dir = Path(args.run_dir) if args.run_dir else REPO_ROOT / config.run.runs_dir / config.run.name
            print(f"reference written to {record_reference(config, run_dir, reference_dir)}")
            return 0
        return regress(config, runs_dir=args.runs_dir or REGRESS_RUNS_DIR, reuse=args.reuse, reference_dir=reference_dir)
    except RegressError as err:
        print(f"irlnb: error: {err}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="irlnb", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    check = commands.add_parser("check", help="validate a params file (nothing is loaded or written)")
    check.add_argument("params", nargs="?", help="params YAML file")
    check.add_argument("--describe", action="store_true", help="list every setting with its description")
    check.set_defaults(func=cmd_check)

    run = commands.add_parser("run", help="run the pipeline's notebooks into runs/<run.name>/")
    run.add_argument("params", help="params YAML file")
    run.add_argument("--only", metavar="STAGE", help="run one stage (its upstream stages must be complete)")
    run.add_argument("--force", action="store_true", help="redo stages that already finished")
    run.add_argument("--runs-dir", help="override run.runs_dir")
    run.set_defaults(func=cmd_run)

    fetch = commands.add_parser("fetch", help="download, verify and cache the embedded assets")
    fetch.set_defaults(func=cmd_fetch)

    regress = commands.add_parser("regress", help="rerun the pipeline into runs/regress/ and compare its metrics "
                                  "with regress/<run name>.metrics.json")
    regress.add_argument("params", help="params YAML file")
    regress.add_argument("--record", action="store_true", help="write the reference from a finished run instead")
    regress.add_argument("--run-dir", help="with --record: the run to record (default runs_dir/run.name)")
    regress.add_argument("--runs-dir", help="where the regression run goes (default runs/regress)")
    regress.add_argument("--reuse", action="store_true", help="keep finished stages of an earlier regression run")
    regress.add_argument("--reference-dir", help="folder of references and tolerances.yaml (default regress/)")
    regress.set_defaults(func=cmd_regress)

    bench = commands.add_parser("bench", help="measure speed ratios side by side; writes runs/bench.json")
    bench.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    bench.add_argument("--rlhf-threads", type=int, default=2, help="torch threads for the RLHF step (default 2)")
    bench.add_argument("--out", default="runs/bench.json", help="where to write the results")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _expected_errors() as err:
        print(f"irlnb: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("irlnb: interrupted; unfinished stages will be redone by the next run", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
