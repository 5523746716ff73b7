"""Command line: `irlnb check`, `run`, `fetch`, `bench`, `regress`, `recoverability`, `replicates`, `recovery`,
`layers`, `readme`.

Every expected failure (bad params, missing file, unreachable hub, corrupted artifact, refused
overwrite) ends with one line on stderr and exit status 2, never a traceback.

Each command imports what it runs when it runs: `irlnb check` reads the models' configs and tokenizers (to refuse
an expert that cannot be audited, or a layer the backbone lacks) but never their weights.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from irlnb.errors import IrlnbError
from irlnb.layout import REPO_ROOT, RunLayout, repo_relative
from irlnb.params_file import describe_settings, load_config
from irlnb.pipeline.stages import STAGES, check_notebook, notebooks, write_parameters_cell
from irlnb.rl.kinds import kind_of


def cmd_check(args) -> int:
    if args.describe:
        print(describe_settings())
        return 0
    if args.write_notebooks:
        for notebook in notebooks():
            print(f"notebooks/{notebook}: {'rewritten' if write_parameters_cell(notebook) else 'up to date'}")
        return 0
    if not args.params:
        raise SystemExit("irlnb check: give a params file (or --describe, or --write-notebooks)")
    config = load_config(args.params, args.set)
    for notebook in notebooks():
        check_notebook(notebook)
    # What `irlnb run` refuses about the models, from their configs (and a brought expert's tokenizer), no weights.
    from irlnb.models.policies import check_models

    for spec in check_models(config, on_disk_only=True):
        print(f"{spec}: not on this machine yet (irlnb run fetches it), so not checked here")
    print(f"{args.params}: ok (run '{config.run.name}', {len(STAGES)} stages)")
    return 0


def cmd_run(args) -> int:
    config = load_config(args.params, args.set)  # a bad params file is refused before the runner loads (seconds)
    from irlnb.pipeline.runner import adopt_finished_stages, run  # papermill and the provenance probe load only to run

    if args.reuse_from:
        source = Path(args.reuse_from)
        if not RunLayout(source).manifest.is_file():
            raise SystemExit(f"irlnb run: --reuse-from {source}: not a run directory (no manifest.json)")
        adopted = adopt_finished_stages(config, source, args.runs_dir, args.until)
        print(f"{', '.join(adopted)}: finished with these settings in {source}; copied" if adopted else
              f"{source}: no stage finished there with these settings that this run lacks; nothing copied")  # fmt: skip
    run(config, only=args.only, force=args.force, runs_dir=args.runs_dir, until=args.until)
    return 0


def cmd_fetch(args) -> int:
    # The models stack (torch, transformers) loads only to fetch.
    from irlnb.data.assets import cache_dir, fetch_all
    from irlnb.models.policies import embedded_policy_dir

    for name, path in fetch_all().items():
        print(f"{name}: {path}")
    print(f"smollm2-135m-instruct: {embedded_policy_dir('smollm2-135m-instruct')}")
    print(f"cache: {cache_dir()}")
    return 0


def cmd_bench(args) -> int:
    from irlnb.pipeline.bench import run_bench  # the whole stack loads only to bench

    run_bench(threads=args.threads, out=args.out, rlhf_threads=args.rlhf_threads, params=args.params)
    return 0


def cmd_regress(args) -> int:
    config = load_config(args.params, args.set)
    from irlnb.pipeline import regress  # loads the runner

    reference_dir = Path(args.reference_dir) if args.reference_dir else regress.REFERENCE_DIR
    reference = Path(args.reference) if args.reference else None
    if args.record:
        run_dir = Path(args.run_dir) if args.run_dir else REPO_ROOT / config.run.runs_dir / config.run.name
        print(f"reference written to {regress.record_reference(config, run_dir, reference_dir, reference)}")
        return 0
    return regress.regress(
        config,
        runs_dir=args.runs_dir or regress.REGRESS_RUNS_DIR,
        reuse=args.reuse,
        reference_dir=reference_dir,
        threads=args.threads,
        reference_path=reference,
    )


def cmd_recoverability(args) -> int:
    config = load_config(args.params)
    from irlnb.pipeline import recoverability  # loads the runner

    kinds = tuple(kind_of(name.strip()).name for name in args.kinds.split(",")) if args.kinds else None
    record = None if args.no_record else recoverability.RECORD
    stop_after = None if args.hours is None else args.hours * 3600
    table = recoverability.run_study(
        config, seeds=args.seeds, kinds=kinds, runs_dir=args.runs_dir, record=record, stop_after=stop_after
    )
    columns = [f"{method}_auc" for method in recoverability.METHODS] + ["white_box_spearman", "irl_spearman"]
    print(table.groupby(["design", "kind", "value"])[columns].mean().round(3).to_string())
    return 0


def cmd_replicates(args) -> int:
    if args.record and args.no_record:
        raise SystemExit("irlnb replicates: --record NAME writes a record and --no-record writes none; give one")
    config = load_config(args.params)
    from irlnb.pipeline import replicates  # loads the runner

    over = "draws" if args.draws else "seeds"
    record = None if args.no_record else replicates.record_path(over, args.irl_only, args.record or "")
    values = replicates.run_replicates(
        config, seeds=args.seeds, runs_dir=args.runs_dir, record=record, irl_only=args.irl_only, over=over
    )["metrics"]
    print("\n".join(replicates.summary_lines(values)))
    if record is not None:
        print(f"recorded: {repo_relative(record)}")
    return 0


def cmd_recovery(args) -> int:
    config = load_config(args.params)
    from irlnb.pipeline import recovery  # loads the runner

    rewards = tuple(args.rewards.split(",")) if args.rewards else recovery.REWARDS
    kinds = tuple(args.kinds.split(",")) if args.kinds else recovery.default_kinds(config)
    if args.record and args.no_record:
        raise SystemExit("irlnb recovery: --record NAME writes a record and --no-record writes none; give one")
    if args.seeds < 1:
        raise SystemExit(f"irlnb recovery: --seeds {args.seeds}: a row needs at least 1 alignment seed")
    record = None if args.no_record else recovery.record_path(args.record or "")
    figures = None if args.no_record or args.record else REPO_ROOT / "figures"  # the figure is the main record's
    rows = recovery.suite_rows(rewards, kinds)
    values = recovery.run_suite(config, rows, args.runs_dir, record, figures, seeds=args.seeds)["metrics"]
    print(recovery.suite_table(values).round(3).to_string(index=False))
    return 0


def cmd_layers(args) -> int:
    config = load_config(args.params, args.set)
    from irlnb.pipeline import layers  # loads the models stack

    chosen = [int(layer) for layer in args.layers.split(",")] if args.layers else None
    record = None if args.no_record else layers.record_path(config.run.name)
    result = layers.choose_layer(
        config,
        chosen,
        seeds=args.seeds,
        record=record,
        runs_dir=args.runs_dir,
        average=args.average,
        split_half=args.split_half,
    )
    print(result["table"].round(4).to_string(index=False))
    layer, pooling = result["table"][["layer", "pooling"]].iloc[0]
    print(
        f"chosen on validation pair log-likelihood (R*-free): {layers.form_name(layer, pooling)} "
        f"(the run's reward reads {result['run_form']})"
    )
    return 0


def cmd_tune_expert(args) -> int:
    from irlnb.params_file import parse_override
    from irlnb.pipeline import tune_expert  # loads the models stack

    config = load_config(args.params, args.set)
    grid = {}
    for text in args.grid:
        dotted, _, values = text.partition("=")
        grid[dotted] = [parse_override(f"{dotted}={value}", "--grid")[1] for value in values.split(",")]
    record = tune_expert.record_path(args.record) if args.record else None
    result = tune_expert.tune_expert(config, grid, args.runs_dir, samples=args.samples, record=record)
    print(result["table"].round(4).to_string(index=False))
    verdict = "passes every guard" if result["chosen_passes_guards"] else "FAILS the guards (none passes them all)"
    print(f"chosen on validation: {result['chosen']} ({verdict})")
    return 0


def cmd_distill(args) -> int:
    from irlnb.pipeline import distill  # loads the models stack

    config = load_config(args.params, args.set)
    record = distill.record_path(args.record) if args.record else None
    result = distill.distill(
        config,
        [int(value) for value in args.epochs.split(",")],
        [float(value) for value in args.learning_rates.split(",")],
        args.samples,
        args.runs_dir,
        record,
    )
    print(result["table"].round(4).to_string(index=False))
    read = {
        "its train prompts' pairs (accuracy)": result["metrics"]["distill.train.within_prompt_pair_accuracy"],
        "the test prompt sets (Spearman)": result["metrics"].get("distill.test.within_prompt_spearman"),
    }
    print(
        f"chosen on validation: {result['chosen']}; within prompts on "
        + ", on ".join(f"{where} {value:.3f}" for where, value in read.items() if value is not None)
    )
    return 0


def cmd_compare(args) -> int:
    from irlnb.pipeline import compare  # loads the models stack

    record = compare.record_path(args.record) if args.record else None
    result = compare.compare(Path(args.first), Path(args.second), args.device, record)
    print(compare.comparison_table(result["metrics"]).round(4).to_string(index=False))
    return 0


def cmd_readme(args) -> int:
    from irlnb.pipeline import readme

    if args.write:
        print(f"README.md: {readme.write_readme()} measured numbers rewritten from regress/*.metrics.json")
    problems = readme.check_readme()
    for problem in problems:
        print(problem)
    print(f"README.md: {'ok' if not problems else f'{len(problems)} number(s) do not match their records'}")
    return 1 if problems else 0


def add_set_option(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="change one setting of the params file (repeatable), validated as the file is",
    )


def add_opt_in_arguments(parser: argparse.ArgumentParser, name: str, params: str, seeds: int, what: str) -> None:
    """The arguments every opt-in study over alignment seeds takes: its params file, its seeds, where its runs go,
    and whether it writes its record regress/<name>.metrics.json."""
    parser.add_argument(
        "params",
        nargs="?",
        default=str(REPO_ROOT / "params" / f"{params}.yaml"),
        help=f"params file: {what} (default params/{params}.yaml)",
    )
    parser.add_argument("--seeds", type=int, default=seeds, help=f"alignment seeds 0 to N-1 (default {seeds})")
    parser.add_argument("--runs-dir", default=f"runs/{name}", help=f"where its runs go (default runs/{name})")
    parser.add_argument("--no-record", action="store_true", help=f"do not write regress/{name}.metrics.json")


def add_check(commands) -> None:
    check = commands.add_parser("check", help="validate a params file and the notebooks (nothing is loaded or written)")
    check.add_argument("params", nargs="?", help="params YAML file")
    check.add_argument("--describe", action="store_true", help="list every setting with its default and description")
    check.add_argument(
        "--write-notebooks",
        action="store_true",
        help="rewrite the notebooks' parameters cells from irlnb/config.py (after changing a setting)",
    )
    add_set_option(check)
    check.set_defaults(func=cmd_check)


def add_run(commands) -> None:
    run = commands.add_parser("run", help="run the pipeline's notebooks into runs/<run.name>/")
    run.add_argument("params", help="params YAML file")
    stage_names = ", ".join(stage.name for stage in STAGES)
    which = run.add_mutually_exclusive_group()
    which.add_argument(
        "--only",
        metavar="STAGE",
        help=f"run one stage (the stages it needs must be complete); stages: {stage_names}",
    )
    which.add_argument(
        "--until", metavar="STAGE", help=f"run the pipeline up to and including this stage; stages: {stage_names}"
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="redo stages whose settings changed (with --only: redo that stage even if unchanged)",
    )
    run.add_argument("--runs-dir", help="override run.runs_dir")
    run.add_argument(
        "--reuse-from",
        metavar="RUN_DIR",
        help="first copy the stages that run finished with the settings this run gives them (say, its expert, to "
        "audit it again under other IRL settings without training it again); that run is only read",
    )
    add_set_option(run)
    run.set_defaults(func=cmd_run)


def add_fetch(commands) -> None:
    fetch = commands.add_parser("fetch", help="download, verify and cache the embedded assets")
    fetch.set_defaults(func=cmd_fetch)


def add_regress(commands) -> None:
    regress = commands.add_parser(
        "regress",
        help="rerun the pipeline into runs/regress/ and compare its metrics with the reference recorded on this "
        "machine kind (regress/<run name>.metrics.json, or one regress/references.yaml lists)",
    )
    regress.add_argument("params", help="params YAML file")
    regress.add_argument("--record", action="store_true", help="write the reference from a finished run instead")
    regress.add_argument("--run-dir", help="with --record: the run to record (default runs_dir/run.name)")
    regress.add_argument("--runs-dir", help="where the regression run goes (default runs/regress)")
    regress.add_argument("--reuse", action="store_true", help="keep finished stages of an earlier regression run")
    regress.add_argument("--reference-dir", help="folder of references and tolerances.yaml (default regress/)")
    regress.add_argument(
        "--reference",
        help="the reference file to compare with or, with --record, to write (default: the one recorded on this "
        "machine kind, among regress/<run name>.metrics.json and those regress/references.yaml lists)",
    )
    regress.add_argument("--threads", type=int, help="torch threads of the regression run (default: the params')")
    add_set_option(regress)
    regress.set_defaults(func=cmd_regress)


def add_recoverability(commands) -> None:
    study = commands.add_parser(
        "recoverability",
        help="IRL fidelity against the kind and budget of the expert "
        "(opt-in; hours): runs/recoverability/, figures/recoverability.*",
    )
    add_opt_in_arguments(study, "recoverability", "recoverability", seeds=2, what="the design of a point")
    study.add_argument("--kinds", help="only the points of these kinds of alignment, comma-separated (e.g. rloo,rft)")
    study.add_argument(
        "--hours",
        type=float,
        help="start no point after this many hours (run again to go on at the next point; 0: only redraw the "
        "figure and the record from the points the record holds)",
    )
    study.set_defaults(func=cmd_recoverability)


def add_replicates(commands) -> None:
    replicated = commands.add_parser(
        "replicates",
        help="Table 1 over alignment seeds: one whole run per seed (opt-in; a default run each): runs/replicates/",
    )
    add_opt_in_arguments(replicated, "replicates", "default", seeds=3, what="the run replicated")
    replicated.add_argument(
        "--irl-only",
        action="store_true",
        help="each run stops after 04_irl: IRL over the seeds, no Table 1 (recorded in "
        "regress/replicates-irl.metrics.json instead)",
    )
    replicated.add_argument(
        "--draws",
        action="store_true",
        help="keep the alignment seed and redraw IRL's demonstrations instead (--seeds N: irl.draw 0 to N-1; the "
        "expert trained once): regress/replicates-draws[-irl].metrics.json",
    )
    replicated.add_argument(
        "--record",
        metavar="NAME",
        help="write the record beside the mode's, as regress/replicates[-draws][-irl]-NAME.metrics.json, and leave "
        "the mode's record as it is (replicates of other params, or of another machine)",
    )
    replicated.set_defaults(func=cmd_replicates)


def add_recovery(commands) -> None:
    suite = commands.add_parser(
        "recovery",
        help="IRL of experts aligned on rewards that are not toxicity, judged against their own reward (opt-in; "
        "a run up to 04_irl per reward x kind): runs/recovery/",
    )
    suite.add_argument(
        "params",
        nargs="?",
        default=str(REPO_ROOT / "params" / "default.yaml"),
        help="params file every row starts from (default params/default.yaml)",
    )
    suite.add_argument("--rewards", help="sources of R*, comma-separated (default: toxicity, sentiment, readability)")
    suite.add_argument(
        "--kinds", help="alignment kinds, comma-separated (default: the params' rlhf.trainer and best_of_n)"
    )
    suite.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="alignment seeds 0 to N-1 of every row (default 1); a row's values are seed 0's, with their mean and sd "
        "over the seeds beside them",
    )
    suite.add_argument("--runs-dir", default="runs/recovery", help="where its runs go (default runs/recovery)")
    suite.add_argument(
        "--no-record", action="store_true", help="write neither regress/recovery.metrics.json nor figures/recovery"
    )
    suite.add_argument(
        "--record",
        metavar="NAME",
        help="write regress/recovery-NAME.metrics.json instead, and leave the suite's record and figure as they are",
    )
    suite.set_defaults(func=cmd_recovery)


def add_layers(commands) -> None:
    layer = commands.add_parser(
        "layers",
        help="choose irl.layer on validation from a finished run's demonstrations (after 04_irl): "
        "<run>/layer_choice.csv, regress/layers-<run name>.metrics.json",
    )
    layer.add_argument("params", help="params YAML file of the finished run")
    layer.add_argument("--layers", help="blocks to compare, comma-separated, -1 the final state (default: a sweep)")
    layer.add_argument("--seeds", type=int, help="head seeds per layer (default: as many as notebook 04 fits)")
    layer.add_argument("--runs-dir", help="override run.runs_dir")
    layer.add_argument("--no-record", action="store_true", help="do not write regress/layers-<run name>.metrics.json")
    layer.add_argument(
        "--average",
        action="store_true",
        help="also the mean over the blocks compared of their standardised mean-pooled states (layer -2, 'average')",
    )
    layer.add_argument(
        "--split-half",
        action="store_true",
        help="also each head refitted on two halves of the train pairs (split by prompt): the Spearman of their "
        "rewards of the validation human texts (R*-free; read beside the criterion, not ranked by)",
    )
    add_set_option(layer)
    layer.set_defaults(func=cmd_layers)


def add_tune_expert(commands) -> None:
    tune = commands.add_parser(
        "tune-expert",
        help="choose the expert's settings on validation prompts by its distance from the KL optimum (within-prompt "
        "Spearman of its log-ratio with R*), guarded by fluency, toxicity reduction and diversity; each candidate "
        "a run up to 03_rlhf_ground_truth",
    )
    tune.add_argument("params", help="params YAML file the candidates start from")
    tune.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="SECTION.KEY=V1,V2",
        help="values of one setting to try (repeatable: every combination is a candidate)",
    )
    tune.add_argument("--samples", type=int, default=4, help="base samples per validation prompt (default 4)")
    tune.add_argument("--runs-dir", help="override run.runs_dir")
    tune.add_argument("--record", metavar="NAME", help="write regress/tune-NAME.metrics.json")
    add_set_option(tune)
    tune.set_defaults(func=cmd_tune_expert)


def add_distill(commands) -> None:
    distill = commands.add_parser(
        "distill",
        help="a reference, not IRL: R* distilled into the policy's backbone (the expert's LoRA and a linear head) on "
        "the expert's budget of scored base samples, judged within prompts as the expert's log-ratio and IRL are",
    )
    distill.add_argument("params", help="params YAML file whose expert's budget (kind, prompts, n) is distilled")
    distill.add_argument("--epochs", default="1,3", help="passes over the prompts to try, comma-separated (1,3)")
    distill.add_argument(
        "--learning-rates", default="3e-4,1e-3", help="AdamW learning rates to try, comma-separated (3e-4,1e-3)"
    )
    distill.add_argument("--samples", type=int, help="base samples per train prompt (default: the kind's n)")
    distill.add_argument("--runs-dir", help="override run.runs_dir")
    distill.add_argument("--record", metavar="NAME", help="write regress/distill-NAME.metrics.json")
    add_set_option(distill)
    distill.set_defaults(func=cmd_distill)


def add_compare(commands) -> None:
    compare = commands.add_parser(
        "compare",
        help="two runs' saved rewards on the same held-out texts (the test split's human texts, the test prompts' "
        "continuations): each one's ROC-AUC, Spearman and within-prompt Spearman with R*, and their differences with "
        "paired bootstrap intervals",
    )
    compare.add_argument("first", help="run directory of the first saved reward (runs/<name>)")
    compare.add_argument("second", help="run directory of the second, drawn on the same texts")
    compare.add_argument("--device", default="cpu", help="torch device the rewards score on (default cpu)")
    compare.add_argument("--record", metavar="NAME", help="write regress/compare-NAME.metrics.json")
    compare.set_defaults(func=cmd_compare)


def add_readme(commands) -> None:
    readme = commands.add_parser("readme", help="check the README's measured numbers against regress/*.metrics.json")
    readme.add_argument("--write", action="store_true", help="rewrite them from the records first")
    readme.set_defaults(func=cmd_readme)


def add_bench(commands) -> None:
    bench = commands.add_parser("bench", help="measure speed ratios side by side; writes runs/bench.json")
    bench.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    bench.add_argument("--rlhf-threads", type=int, default=2, help="torch threads for the RLHF step (default 2)")
    bench.add_argument(
        "--params",
        default=str(REPO_ROOT / "params" / "default.yaml"),
        help="params file whose models and settings are benched (default params/default.yaml)",
    )
    bench.add_argument("--out", default="runs/bench.json", help="where to write the results")
    bench.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="irlnb", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    # In the order `irlnb --help` lists them.
    for add_command in (
        add_check,
        add_run,
        add_fetch,
        add_regress,
        add_recoverability,
        add_replicates,
        add_recovery,
        add_layers,
        add_compare,
        add_tune_expert,
        add_distill,
        add_readme,
        add_bench,
    ):
        add_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (IrlnbError, FileNotFoundError) as err:
        print(f"irlnb: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("irlnb: interrupted; unfinished stages will be redone by the next run", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
