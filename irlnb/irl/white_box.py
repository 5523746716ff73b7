"""The white-box reward log pi_expert - log pi_base, judged like the fitted heads: what the expert's behaviour encodes
exactly, where its weights can be read (an auditor of a deployed model may not have them: a reference, not IRL)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from irlnb import metric_names
from irlnb.irl.demonstrations import used_pairs
from irlnb.irl.feature_sets import PairSet, TextSet, prompt_ids
from irlnb.irl.judging import judge_rewards, validation_threshold
from irlnb.layout import RunLayout
from irlnb.rewards.likelihood import LogRatioReward
from irlnb.rl.policy_card import PolicyCard


def white_box_rows(
    reward,
    demonstrations: pd.DataFrame,
    curated: pd.DataFrame,
    scores: pd.DataFrame,
    batch_size: int,
    cache_dir: Path | None = None,
    prompt_sets: pd.DataFrame | None = None,
) -> list[dict]:
    """The white-box log-ratio reward judged like the fitted heads: given the prompt (`log_ratio`) and on whole
    texts (`log_ratio_whole`), its threshold fitted on validation human texts. Its test scores are not saved.
    Read block by block (human texts, the expert's samples, the base's), the base's side kept in `cache_dir`.
    With `prompt_sets` (`irlnb.irl.within_prompt.draw_prompt_sets`), how it orders each test prompt's
    continuations: the expert's distance from its KL optimum within prompts, where its log-ratio given the prompt
    orders a prompt's continuations exactly as the reward it was aligned with does."""
    sets = {}
    for split in ("validation", "test"):
        human = curated[curated["split"] == split].merge(scores[["id", "reward"]], on="id")
        pairs = used_pairs(demonstrations, split)
        blocks = [
            reward.gaps(prompts.tolist(), continuations.tolist(), batch_size, cache_dir)
            for prompts, continuations in (
                (human["prompt"], human["continuation"]),
                (pairs["prompt"], pairs["expert"]),
                (pairs["prompt"], pairs["non_expert"]),
            )
        ]
        whole, given = (np.concatenate(values) for values in zip(*blocks))
        human_set = TextSet(torch.zeros(len(human), 0), human["reward"].to_numpy(), human["label"].to_numpy())
        pair_set = PairSet(
            TextSet(torch.zeros(len(pairs), 0), pairs["expert_r_star"].to_numpy(), -np.ones(len(pairs))),
            TextSet(torch.zeros(len(pairs), 0), pairs["non_expert_r_star"].to_numpy(), -np.ones(len(pairs))),
            prompt_ids(pairs),
        )
        n = len(human)
        sets[split] = {
            name: (values[:n], values[n : n + len(pairs)], values[n + len(pairs) :], human_set, pair_set)
            for name, values in ((metric_names.WHITE_BOX, given), (metric_names.WHITE_BOX_WHOLE, whole))
        }
    within = {}
    if prompt_sets is not None and len(prompt_sets):
        whole, given = reward.gaps(
            prompt_sets["prompt"].tolist(), prompt_sets["continuation"].tolist(), batch_size, cache_dir
        )
        texts = TextSet(torch.zeros(len(prompt_sets), 0), prompt_sets["r_star"].to_numpy(), -np.ones(len(prompt_sets)))
        groups = prompt_sets["group"].to_numpy()
        within = {metric_names.WHITE_BOX: (given, texts, groups), metric_names.WHITE_BOX_WHOLE: (whole, texts, groups)}
    rows = []
    for name in (metric_names.WHITE_BOX, metric_names.WHITE_BOX_WHOLE):
        r_human, r_expert, r_non_expert, human_set, _ = sets["validation"][name]
        threshold = validation_threshold(r_human, human_set, r_expert, r_non_expert)
        rows.append(
            {
                "loss": name,
                "seed": 0,
                "epoch": 0,
                "threshold": threshold,
                **judge_rewards(*sets["test"][name], threshold, within.get(name)),
            }
        )
    # log pi_expert - log pi_base of the expert's own test continuations, given the prompt: a Monte-Carlo estimate
    # of KL(expert || base) per continuation (for the sampling decoding's distributions, top-k cut aside)
    rows[0]["expert_log_ratio_mean"] = float(np.mean(sets["test"][metric_names.WHITE_BOX][1]))
    return rows


def white_box_reward(layout: RunLayout, base: str, dtype: str, device: str):
    """The log-ratio reward of the expert (stage 03's policy aligned with R*) over the base, or None when the
    expert is a best-of-n policy (it has no weights, so no likelihood of its own)."""
    folder = layout.policy("ground_truth")
    if not PolicyCard.read(folder).has_weights:
        return None
    return LogRatioReward.from_sources(f"local:{folder}", base, dtype=dtype, device=device)
