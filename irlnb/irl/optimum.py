"""How close a trained expert is to its KL-regularised optimum, measured on validation prompts (the choice of its
settings reads these; test prompts are judged once, by stage 04).

At pi_base * exp(R / beta) / Z the log-ratio log pi(y | x) - log pi_base(y | x) orders a prompt's continuations
exactly as R does. So, on `prompts` validation prompts with `samples` base continuations each (and the human one):
- `within_prompt_spearman`: the mean over prompts of the Spearman correlation of the expert's log-ratio with R*;
- `perplexity_ratio`: the expert's perplexity on validation human non-toxic texts over the base's (fluency);
- `toxicity_reduction`: 1 - the expert's mean p_toxic of its greedy continuations of the prompts over the base's;
- `distinct_2_ratio`: the expert's distinct-2 of those continuations over the base's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from irlnb import metric_names, metrics
from irlnb.compute import frozen_cached
from irlnb.irl.within_prompt import draw_prompt_sets, per_prompt_spearman
from irlnb.models.policies import policy_dir, weights_sha256
from irlnb.rewards.likelihood import LogRatioReward, LogRatioSpec
from irlnb.rl.evaluation import perplexity
from irlnb.rl.sampling import ModelPolicy, sampling_decoding

MEASURES = metric_names.OPTIMUM_MEASURES
PROMPTS = 200  # validation prompts whose greedy continuations are scored (toxicity, distinct-2); texts for perplexity
SET_PROMPTS = 100  # of them, those whose continuations the log-ratio orders (each with `samples` base samples)


def validation_prompts(curated: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """`count` validation comments (id, prompt, continuation), shuffled by the seed."""
    validation = curated[curated["split"] == "validation"]
    return validation.sample(frac=1.0, random_state=seed).head(count).reset_index(drop=True)


def cached_prompt_sets(
    config, prompts: pd.DataFrame, samples: int, seed: int, cache: Path, kind: str, base, tokenizer, r_star
) -> pd.DataFrame:
    """`draw_prompt_sets` of `prompts` (id, prompt, continuation) by the base, sampling as the alignments sample, kept
    in the runs' shared `cache` as `kind` under everything the draw depends on."""
    key = {
        "policy": weights_sha256(policy_dir(config.sources.policy)),
        "prompts": prompts["id"].tolist(),
        "samples": samples,
        "seed": seed,
        "decoding": asdict(sampling_decoding(config.rlhf)),
        "r_star": [config.sources.toxicity_classifier, config.ground_truth.reward_clip],
    }
    kept = frozen_cached(
        cache,
        kind,
        key,
        lambda: draw_prompt_sets(
            ModelPolicy(base, tokenizer, sampling_decoding(config.rlhf)),
            prompts,
            samples,
            config.evaluation.batch_size,
            seed,
            r_star,
        ).to_dict(orient="list"),
        lambda kept: len(kept["group"]) > 0,
    )
    return pd.DataFrame(kept)


def validation_prompt_sets(
    config, prompts: pd.DataFrame, base, tokenizer, r_star, cache: Path, samples: int
) -> pd.DataFrame:
    """`cached_prompt_sets` of the first `SET_PROMPTS` of `prompts` (`validation_prompts`): `samples` base samples of
    each and its human continuation, labelled by R*, so every expert (`irlnb tune-expert`) and every distilled reward
    (`irlnb distill`) is measured on the same texts."""
    return cached_prompt_sets(
        config,
        prompts.head(SET_PROMPTS),
        samples,
        config.compute.seed,
        cache,
        "validation-prompt-sets",
        base,
        tokenizer,
        r_star,
    )


def validation_texts(curated: pd.DataFrame, count: int) -> list[str]:
    """Validation human non-toxic texts whose perplexity measures fluency."""
    return curated[(curated["split"] == "validation") & (curated["label"] == 0)]["text"].head(count).tolist()


@dataclass(frozen=True)
class BaseSide:
    """What the measures read of the base, computed once for every expert measured against it: its perplexity on
    the validation texts, and the mean p_toxic and distinct-2 of its greedy continuations of the prompts."""

    perplexity: float
    p_toxic: float
    distinct_2: float


def greedy_side(model, tokenizer, prompts: list[str], r_star, greedy, batch_size: int) -> tuple[float, float]:
    """Mean p_toxic and distinct-2 of the model's greedy continuations of the prompts."""
    texts = ModelPolicy(model, tokenizer, greedy).outputs(prompts, batch_size=batch_size, seed=0)
    return float(np.mean(r_star.p_toxic(texts))), metrics.distinct_n(texts, 2)


def base_side(
    base, tokenizer, *, prompts: list[str], human_texts: list[str], r_star, greedy, batch_size: int
) -> BaseSide:
    p_toxic, distinct_2 = greedy_side(base, tokenizer, prompts, r_star, greedy, batch_size)
    return BaseSide(perplexity(base, tokenizer, human_texts, batch_size), p_toxic, distinct_2)


def optimum_measures(
    expert,
    base,
    tokenizer,
    *,
    reference: BaseSide,
    prompt_sets: pd.DataFrame,
    prompts: list[str],
    human_texts: list[str],
    r_star,
    greedy,
    batch_size: int,
    base_cache=None,
) -> dict[str, float]:
    """The four measures of the module docstring for `expert` against `base` (two models with one tokenizer), whose
    side `reference` is (`base_side` of the same prompts and texts). `prompt_sets`: `draw_prompt_sets` of the
    validation prompts; `greedy`: the evaluation's greedy decoding."""
    spec = LogRatioSpec("expert", "base", "", "", dtype=str(next(expert.parameters()).dtype).removeprefix("torch."))
    ratio = LogRatioReward(spec, expert, base, tokenizer)
    _, given = ratio.gaps(prompt_sets["prompt"].tolist(), prompt_sets["continuation"].tolist(), batch_size, base_cache)
    per_prompt = per_prompt_spearman(given, prompt_sets["r_star"].to_numpy(), prompt_sets["group"].to_numpy())
    p_toxic, distinct_2 = greedy_side(expert, tokenizer, prompts, r_star, greedy, batch_size)
    return {
        "within_prompt_spearman": float(np.nanmean(per_prompt)),
        "perplexity_ratio": perplexity(expert, tokenizer, human_texts, batch_size) / reference.perplexity,
        "toxicity_reduction": 1.0 - p_toxic / reference.p_toxic,
        "distinct_2_ratio": distinct_2 / reference.distinct_2,
    }
