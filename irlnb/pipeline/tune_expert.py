"""`irlnb tune-expert`: the expert's settings chosen on validation prompts, by how close it comes to its KL
optimum, with fluency, toxicity reduction and diversity as guards (`irlnb.irl.optimum`).

Each candidate of the grid (every combination of the values given per setting) is a run of stages 01 to
03_rlhf_ground_truth in a run directory of its own (`<run name>-tune-<digest of its changes>`), so a killed tuning
goes on where it stopped and a finished candidate is never trained again. Its expert is then measured on
validation prompts only: test prompts are judged once, by the run of the chosen settings. The choice: among the
candidates that pass every guard, the highest within-prompt Spearman of the log-ratio with R*; none passing, the
highest among all, reported as failing the guards. Recorded in regress/tune-<name>.metrics.json with every
candidate's measures and the provenance of the code that measured them.
"""

from __future__ import annotations

import itertools
import operator
from pathlib import Path
from typing import Any

import pandas as pd

from irlnb.compute import resolve_device, seed_everything
from irlnb.config import Config
from irlnb.data.curation import load_curated
from irlnb.irl.optimum import (
    MEASURES,
    PROMPTS,
    base_side,
    optimum_measures,
    validation_prompt_sets,
    validation_prompts,
    validation_texts,
)
from irlnb.layout import REPO_ROOT, RunLayout, repo_relative, write_json_atomic
from irlnb.metric_names import tune_metric
from irlnb.models.policies import load_policy
from irlnb.params_file import config_with, settings_digest
from irlnb.pipeline import runner
from irlnb.pipeline.provenance import held_provenance, provenance
from irlnb.rewards.ground_truth import GroundTruthReward
from irlnb.rl.generation import Decoding

EXPERT_STAGE = "03_rlhf_ground_truth"
# The expert issue's bounds on its default expert, read on validation: perplexity at most 1.10x the base's, p_toxic
# reduced by half or more, distinct-2 at least 0.9x the base's.
GUARDS = {
    "perplexity_ratio": (operator.le, 1.10),
    "toxicity_reduction": (operator.ge, 0.5),
    "distinct_2_ratio": (operator.ge, 0.9),
}


def record_path(name: str) -> Path:
    return REPO_ROOT / "regress" / f"tune-{name}.metrics.json"


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the values given per setting, in the order given."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[key] for key in keys))]


def candidate_config(base: Config, changes: dict[str, Any]) -> Config:
    """The candidate's config: the base's with its changes, in a run directory named by them."""
    name = f"{base.run.name}-tune-{settings_digest(changes)[:8]}"
    return config_with(base, {**changes, "run.name": name}, f"tune-expert {changes}")


def passes(values: dict[str, float]) -> bool:
    return all(compare(values[name], bound) for name, (compare, bound) in GUARDS.items())


def choice_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per candidate, best first: those that pass every guard, then by within-prompt Spearman."""
    table = pd.DataFrame(rows)
    table["passes_guards"] = [passes(row) for row in rows]
    return table.sort_values(["passes_guards", "within_prompt_spearman"], ascending=False, kind="stable")


def tune_expert(
    config: Config,
    grid: dict[str, list[Any]],
    runs_dir: str | None = None,
    samples: int = 4,
    record: Path | None = None,
    log=print,
) -> dict[str, Any]:
    """Train every candidate (stages 01 to 03 of its run), measure it on validation, and choose."""
    started = provenance(REPO_ROOT)  # the code that measures: read before it runs
    points = grid_points(grid)
    configs = [candidate_config(config, changes) for changes in points]
    for number, candidate in enumerate(configs, 1):
        log(f"[candidate {number}/{len(configs)}] {points[number - 1]}")
        runner.run(candidate, runs_dir=runs_dir, until=EXPERT_STAGE, log=log)
    seed_everything(config.compute.seed, config.compute.torch_threads)
    device = resolve_device(config.compute.device)
    first = RunLayout.of_run(configs[0].run, runs_dir)
    curated = load_curated(first)
    r_star = GroundTruthReward.load(config.sources, config.ground_truth, device=device)
    base, tokenizer = load_policy(config.sources.policy, device=device)
    prompts = validation_prompts(curated, PROMPTS, config.compute.seed)
    prompt_sets = validation_prompt_sets(config, prompts, base, tokenizer, r_star, first.cache, samples)
    greedy = Decoding(config.evaluation.max_new_tokens)
    human_texts = validation_texts(curated, PROMPTS)
    reference = base_side(
        base,
        tokenizer,
        prompts=prompts["prompt"].tolist(),
        human_texts=human_texts,
        r_star=r_star,
        greedy=greedy,
        batch_size=config.evaluation.batch_size,
    )
    rows = []
    for changes, candidate in zip(points, configs):
        layout = RunLayout.of_run(candidate.run, runs_dir)
        expert, _ = load_policy(f"local:{layout.policy('ground_truth')}", device=device)
        values = optimum_measures(
            expert,
            base,
            tokenizer,
            reference=reference,
            prompt_sets=prompt_sets,
            prompts=prompts["prompt"].tolist(),
            human_texts=human_texts,
            r_star=r_star,
            greedy=greedy,
            batch_size=config.evaluation.batch_size,
            base_cache=first.cache,
        )
        rows.append({**changes, **values, "run": repo_relative(layout.root)})
    table = choice_table(rows)
    result = {
        "metrics": tune_metrics(table, points),
        "grid": grid,
        "params_file": repo_relative(config.path),
        "params": config.to_dict(),  # the settings every candidate started from, --set changes included
        "chosen": {key: plain(table.iloc[0][key]) for key in grid},
        "chosen_passes_guards": bool(table.iloc[0]["passes_guards"]),
        **held_provenance(started, REPO_ROOT),
    }
    if record is not None:
        write_json_atomic(record, result)
    return {"table": table, **result}


def plain(value: Any) -> Any:
    """A table's value as Python writes it (0.1, not np.float64(0.1))."""
    return value.item() if hasattr(value, "item") else value


def tune_metrics(table: pd.DataFrame, points: list[dict[str, Any]]) -> dict[str, float]:
    """`tune.<digest of a candidate's changes>.<measure>` for every candidate, and `tune.chosen.<measure>`."""
    values = {}
    for (_, row), changes in zip(table.sort_index().iterrows(), points):
        name = settings_digest(changes)[:8]
        values.update({tune_metric(name, measure): float(row[measure]) for measure in MEASURES})
    values.update({tune_metric("chosen", measure): float(table.iloc[0][measure]) for measure in MEASURES})
    return values
