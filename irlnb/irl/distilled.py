"""R* distilled into the policy's own backbone: how well a reward read from this backbone, fitted to R* on the
scored samples an expert of this budget trains on, orders a prompt's continuations as R* does.

The expert's log-ratio and IRL's R-hat are judged within prompts (`irlnb.irl.within_prompt`): the mean over held-out
prompts of the Spearman correlation with R* among one prompt's continuations. A reward fitted to R* itself, from the
same backbone and the same budget of scored samples, bounds what either can be asked for at that budget: the
expert's log-ratio is one reward of this backbone fitted to the same scores (by a harder route, through the policy),
and IRL sees less (samples of the expert, never a score). The distilled reward is the policy with the expert's LoRA
adapter (its kind's `lora_rank`) and a linear head on the final normed state at the last token, fitted to R*'s
scores of the samples by the squared error of the per-prompt centred rewards (`centred_loss`: only the order within
a prompt is identifiable from an expert, and only it is asked). It reads R*, so it is a reference row, never an IRL
result (`irlnb distill` records it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from irlnb.irl.within_prompt import within_prompt_metrics
from irlnb.progress import tracked
from irlnb.rewards.features import FeatureReward, reward_form
from irlnb.rl.policy_gradient import lora_config

PROMPTS_PER_STEP = 8  # prompts per optimiser step, each with all its samples
MAX_LENGTH = 128  # longest text read, in tokens (as IRL's reward reads them: irl.max_length's default)


@dataclass(frozen=True)
class Distillation:
    """How one distilled reward is fitted: passes over the prompts and AdamW's learning rate (linear decay to 0)."""

    epochs: int
    learning_rate: float


def centred_loss(rewards: torch.Tensor, targets: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean over texts of the squared difference between the reward and the target, each centred on its prompt's
    mean (`groups`: each text's prompt, 0..g-1): zero for any reward that equals the target plus a per-prompt shift."""
    counts = torch.bincount(groups).to(rewards.dtype)

    def centred(values: torch.Tensor) -> torch.Tensor:
        means = torch.zeros(len(counts), dtype=values.dtype, device=values.device).index_add(0, groups, values)
        return values - (means / counts)[groups]

    return (centred(rewards) - centred(targets.to(rewards.dtype))).pow(2).mean()


def trainable_reward(policy: str, section, seed: int, device: str) -> FeatureReward:
    """The policy's backbone with the LoRA adapter of the expert's kind (`section.lora_rank`; 0: every weight
    trained) and a zero head on its final normed state at the last token."""
    reward = reward_form(policy, "last", -1, MAX_LENGTH, kind="distilled", device=device)
    torch.manual_seed(seed)  # the adapter's initialisation
    adapter = lora_config(section)
    if adapter is None:
        reward.backbone.requires_grad_(True)
    else:
        from peft import get_peft_model  # the experts' LoRA; peft loads only with it

        get_peft_model(reward.backbone, adapter)  # injects the adapter into reward.backbone itself
    reward.head.requires_grad_(True)
    return reward


def texts_of(sets: pd.DataFrame) -> list[str]:
    """What R* scored and the reward reads: prompt + continuation."""
    return (sets["prompt"] + sets["continuation"]).tolist()


def fit_distilled(
    policy: str, section, sets: pd.DataFrame, distillation: Distillation, seed: int, dtype: str, device: str
) -> tuple[FeatureReward, list[float]]:
    """The distilled reward fitted to `sets` (`draw_prompt_sets` rows: group, prompt, continuation, r_star), R*
    scaled to unit sd within prompts; returns it and each epoch's mean loss. The step runs in bfloat16 autocast where
    `dtype` is bfloat16 (the training dtype), over float32 weights."""
    reward = trainable_reward(policy, section, seed, device)
    groups = [rows for _, rows in sets.groupby("group", sort=False) if len(rows) > 1]
    if not groups:
        raise ValueError("no prompt with two or more scored samples: nothing to order")
    centred = sets["r_star"] - sets.groupby("group")["r_star"].transform("mean")
    scale = float(centred.std()) or 1.0
    parameters = [p for p in [*reward.backbone.parameters(), *reward.head.parameters()] if p.requires_grad]
    optimiser = torch.optim.AdamW(parameters, lr=distillation.learning_rate, weight_decay=0.0)
    steps = distillation.epochs * math.ceil(len(groups) / PROMPTS_PER_STEP)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0 - step / steps)
    order_generator = np.random.default_rng(seed)
    reward.backbone.train()
    losses = []
    for epoch in range(distillation.epochs):
        epoch_losses = []
        order = order_generator.permutation(len(groups))
        starts = range(0, len(order), PROMPTS_PER_STEP)
        for start in tracked(starts, len(starts), f"distilling R*, epoch {epoch + 1}/{distillation.epochs}", "step"):
            chosen = [groups[i] for i in order[start : start + PROMPTS_PER_STEP]]
            batch = pd.concat(chosen)
            prompt_of = torch.as_tensor(np.repeat(np.arange(len(chosen)), [len(rows) for rows in chosen]))
            targets = torch.as_tensor(batch["r_star"].to_numpy() / scale, dtype=torch.float32)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
                rewards = reward.head(reward.pooled(reward.tokenize(texts_of(batch)))).squeeze(-1)
            loss = centred_loss(rewards.float(), targets.to(rewards.device), prompt_of.to(rewards.device))
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimiser.step()
            schedule.step()
            epoch_losses.append(float(loss.detach()))
        losses.append(float(np.mean(epoch_losses)))
    reward.backbone.eval()
    return reward, losses


def judged_within_prompts(reward: FeatureReward, sets: pd.DataFrame, batch_size: int) -> dict[str, float]:
    """`within_prompt_metrics` of the reward's scores of the sets' texts (a prompt's base samples and, in the
    validation and test sets, its human continuation)."""
    scores = reward.score(texts_of(sets), batch_size)
    return within_prompt_metrics(scores, sets["r_star"].to_numpy(), sets["group"].to_numpy())
