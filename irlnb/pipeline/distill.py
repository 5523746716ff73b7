"""`irlnb distill`: R* distilled into the policy's backbone at the budget of the params' expert (`irlnb.irl.distilled`),
the reference that says how far a reward of this backbone can order a prompt's continuations as R* does.

The budget is the expert's: its kind's train prompts (`rl.training.training_rows`, the same prompts, drawn by the
same seed) with `n` base samples of each (the kind's `n`, or `--samples`), scored by R*. Each candidate fitting (every
combination of the epochs and learning rates given) is judged on the validation prompt sets `irlnb tune-expert` reads
(the same cached texts), the best is chosen there, and then judged once on its own train prompts (how well it fits)
and on stage 04's test prompt sets where the run has them (the texts every IRL row and the expert's log-ratio are
judged on). Recorded in regress/distill-<name>.metrics.json with the provenance of the code that measured it.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from irlnb.compute import resolve_device, seed_everything
from irlnb.config import Config
from irlnb.data.curation import load_curated
from irlnb.errors import IrlnbError
from irlnb.irl.distilled import Distillation, fit_distilled, judged_within_prompts
from irlnb.irl.optimum import PROMPTS, cached_prompt_sets, validation_prompt_sets, validation_prompts
from irlnb.layout import REPO_ROOT, RunLayout, repo_relative, write_json_atomic
from irlnb.metric_names import distill_metric
from irlnb.models.policies import load_policy
from irlnb.params_file import settings_digest
from irlnb.pipeline import runner
from irlnb.pipeline.provenance import held_provenance, provenance
from irlnb.rewards.ground_truth import GroundTruthReward
from irlnb.rl.kinds import kind_of, kind_section
from irlnb.rl.training import alignment_seed, training_rows

CURATED_STAGE = "02_ground_truth_rm"  # what the distillation needs of a run: the curated splits (and R*'s settings)
TRAIN_SETS_SEED = 400_009  # the distilled reward's samples draw apart from the expert's and the prompt sets'
TRAIN_FIT_PROMPTS = 200  # of its train prompts, those its fit is read on (the order it learned, not generalised)
FIT_MEASURES = ("within_prompt_spearman", "within_prompt_pair_accuracy")  # its fit on its own train prompts
VALIDATION_SAMPLES = 4  # base samples per validation prompt: as `irlnb tune-expert` reads them by default


class DistillError(IrlnbError, ValueError):
    """A distillation that cannot run as asked; the message is one line."""


def record_path(name: str) -> Path:
    return REPO_ROOT / "regress" / f"distill-{name}.metrics.json"


def candidates(epochs: list[int], learning_rates: list[float]) -> list[Distillation]:
    return [Distillation(e, rate) for e, rate in itertools.product(epochs, learning_rates)]


def candidate_name(candidate: Distillation) -> str:
    return settings_digest({"epochs": candidate.epochs, "learning_rate": candidate.learning_rate})[:8]


def budget(config: Config, samples: int | None) -> tuple[Any, Any, int]:
    """The expert's kind, its settings section, and the base samples per prompt (`samples`, else the kind's `n`)."""
    if not config.sources.toxicity_classifier:
        raise DistillError("irlnb distill fits R*, and the params name no sources.toxicity_classifier")
    kind = kind_of(config.rlhf.trainer)
    section = kind_section(config, kind)
    count = samples or getattr(section, "n", None)
    if not count or count < 2:
        raise DistillError(
            f"rlhf.trainer {config.rlhf.trainer} draws no n samples per prompt: give --samples (2 or more)"
        )
    return kind, section, count


def train_sets(config: Config, layout: RunLayout, kind, section, samples: int, base, tokenizer, r_star) -> pd.DataFrame:
    """`samples` base samples of each of the expert's train prompts, scored by R* (the human continuation left out:
    the expert never sees it), kept in the runs' shared cache."""
    seed = alignment_seed(config.compute, config.rlhf)
    rows = training_rows(load_curated(layout), config.rlhf, kind, section, seed)
    sets = cached_prompt_sets(
        config, rows, samples, seed + TRAIN_SETS_SEED, layout.cache, "distill-train-sets", base, tokenizer, r_star
    )
    return sets[sets["source"] == "base"].reset_index(drop=True)


def distill(
    config: Config,
    epochs: list[int],
    learning_rates: list[float],
    samples: int | None = None,
    runs_dir: str | None = None,
    record: Path | None = None,
    log=print,
) -> dict[str, Any]:
    """Fit every candidate, choose on validation, judge the chosen once on its train prompts and the test sets."""
    started = provenance(REPO_ROOT)  # the code that measures: read before it runs
    kind, section, samples = budget(config, samples)
    layout = RunLayout(runner.run(config, runs_dir=runs_dir, until=CURATED_STAGE, log=log))
    seed_everything(config.compute.seed, config.compute.torch_threads)
    device = resolve_device(config.compute.device)
    dtype = config.compute.resolved().training_dtype
    r_star = GroundTruthReward.load(config.sources, config.ground_truth, device=device)
    base, tokenizer = load_policy(config.sources.policy, device=device)
    train = train_sets(config, layout, kind, section, samples, base, tokenizer, r_star)
    prompts = validation_prompts(load_curated(layout), PROMPTS, config.compute.seed)
    validation = validation_prompt_sets(config, prompts, base, tokenizer, r_star, layout.cache, VALIDATION_SAMPLES)
    del base
    batch_size = config.evaluation.batch_size
    rows, chosen = [], None  # the best so far: only it is kept (each reward holds a copy of the backbone)
    for candidate in candidates(epochs, learning_rates):
        log(f"[distill] {candidate} on {train['group'].nunique()} prompts x {samples} samples")
        start = time.perf_counter()
        reward, losses = fit_distilled(
            config.sources.policy, section, train, candidate, config.compute.seed, dtype, device
        )
        judged = judged_within_prompts(reward, validation, batch_size)
        name = candidate_name(candidate)
        rows.append(
            {
                "candidate": name,
                "epochs": candidate.epochs,
                "learning_rate": candidate.learning_rate,
                "validation_within_prompt_spearman": judged["within_prompt_spearman"],
                "train_loss": losses[-1],
                "seconds": time.perf_counter() - start,
            }
        )
        score = np.nan_to_num(judged["within_prompt_spearman"], nan=-np.inf)  # ranked as the table sorts: NaN last
        if chosen is None or score > chosen[0]:
            chosen = (score, reward)
    table = pd.DataFrame(rows).sort_values("validation_within_prompt_spearman", ascending=False, kind="stable")
    chosen = chosen[1]
    fit = judged_within_prompts(chosen, train[train["group"] < TRAIN_FIT_PROMPTS], batch_size)
    test = {}
    if layout.prompt_sets.is_file():
        test = judged_within_prompts(chosen, pd.read_parquet(layout.prompt_sets), batch_size)
    else:
        log(f"[distill] no test number: {repo_relative(layout.root)} has no stage 04 prompt sets (run it first)")
    result = {
        "metrics": distill_metrics(table, fit, test, train["group"].nunique(), samples),
        "kind": kind.name,
        "params_file": repo_relative(config.path),
        "params": config.to_dict(),  # the settings whose expert's budget it fitted, --set changes included
        "run": repo_relative(layout.root),
        "chosen": {key: table.iloc[0][key].item() for key in ("epochs", "learning_rate")},
        **held_provenance(started, REPO_ROOT),
    }
    if record is not None:
        write_json_atomic(record, result)
    return {"table": table, **result}


def distill_metrics(
    table: pd.DataFrame, fit: dict[str, float], test: dict[str, float], prompts: int, samples: int
) -> dict[str, float]:
    """Each candidate's validation number, the chosen one's, its fit on its train prompts, its test numbers, the
    budget."""
    values = {
        distill_metric(row.candidate, measure): float(getattr(row, measure))
        for row in table.itertuples()
        for measure in ("validation_within_prompt_spearman", "train_loss")
    }
    values[distill_metric("chosen", "validation_within_prompt_spearman")] = float(
        table["validation_within_prompt_spearman"].iloc[0]
    )
    for measure in FIT_MEASURES:  # a Spearman needs three samples of a prompt: none with n = 2
        if np.isfinite(fit[measure]):
            values[distill_metric("train", measure)] = fit[measure]
    values.update({distill_metric("test", measure): value for measure, value in test.items()})
    values[distill_metric("budget", "prompts")] = float(prompts)
    values[distill_metric("budget", "samples")] = float(samples)
    return values
