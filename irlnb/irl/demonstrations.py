"""IRL demonstrations: for one prompt, the expert's continuation (the policy aligned with R*) and the
non-expert's (the base policy), with R* of each and why a pair carries no preference.

How they are drawn is a design choice (`irl.*`): greedy or sampled continuations, how many pairs
per prompt, which prompts (all train prompts or the toxic ones), how long. Train pairs use
train-split prompts, validation pairs validation-split prompts, test pairs every test prompt; the
splits never share a comment.

IRL sees only what an auditor of the expert could draw: samples of the expert and of the base, as
they are. With `irl.matched` both models draw with the same random numbers (an auditor holding both
can); a best-of-n expert has no model of its own, so it is sampled independently of the base (its
rejected candidates are never handed out), and a matched design of it is refused. Nothing here
reads R* to draw, keep or drop a pair: R* only labels the pairs afterwards, for judging. A dpo
expert trained on preference pairs of some train prompts; those prompts are never drawn here.
"""

from __future__ import annotations

from dataclasses import asdict

import pandas as pd

from irlnb import metric_names
from irlnb.config import IrlSettings
from irlnb.errors import IrlnbError
from irlnb.layout import RunLayout
from irlnb.metric_names import SPLITS
from irlnb.models.policies import load_policy, policy_dir, weights_sha256
from irlnb.rewards.ground_truth import r_star_of
from irlnb.rl.generation import Decoding
from irlnb.rl.kinds import AlignmentKind, kind_of
from irlnb.rl.policy_card import PolicyCard, load_stage_policy
from irlnb.rl.sampling import BestOfN, KeptSamples, ModelPolicy, sampling_decoding


class DemonstrationError(IrlnbError, ValueError):
    """A demonstration design that cannot be drawn; the message is one line."""


EXPERT_REWARD = "ground_truth"  # the expert is the policy notebook 03 aligned with R*
SPLIT_SEED = {split: number for number, split in enumerate(SPLITS)}  # each split samples with its own seeds
DRAW_SEED_STEP = 1_000_003  # irl.draw's step between the sampling seeds, beyond the splits' (prompts stay the same)


def expert_design_problem(kind: AlignmentKind, irl) -> str:
    """Why the design `irl` cannot draw an expert of `kind` ('' if it can): an expert without a model of its own
    only samples, and its samples cannot share the base's random numbers (its kind's record says which)."""
    if kind.has_weights:
        return ""
    if irl.decoding == "greedy":
        return (
            f"irl.decoding is 'greedy', but the expert is a {kind.short_label} policy, which only "
            "samples; use irl.decoding: sampled"
        )
    if irl.matched:
        return (
            f"irl.matched is true, but the expert is a {kind.short_label} policy: it has no model of its own, so its "
            "samples cannot share the base's random numbers; set irl.matched: false"
        )
    return ""


def demonstration_policies(layout: RunLayout, policy: str, irl, sampling, device: str, dtype: str):
    """The expert (stage 03's policy aligned with R*) and the non-expert (the base), decoded as the design says.
    The base is frozen: its samples are kept in the runs' shared cache, so the points of a study that draw the
    same prompts with the same seed read them once. A design the expert's kind cannot draw is refused before
    anything loads."""
    kind = kind_of(PolicyCard.read(layout.policy(EXPERT_REWARD)).trainer)
    problem = expert_design_problem(kind, irl)
    if problem:
        raise DemonstrationError(problem)
    if irl.decoding == "greedy":
        decoding = Decoding(irl.max_new_tokens)
    else:
        decoding = sampling_decoding(sampling, irl.max_new_tokens)
    expert = load_stage_policy(layout, EXPERT_REWARD, device, dtype, decoding)
    if kind.has_weights:
        model, tokenizer = load_policy(policy, device=device, dtype=dtype)
        base, drawing = ModelPolicy(model, tokenizer, decoding), {"policy": "model", "decoding": asdict(decoding)}
    else:  # the expert samples from the base model: the base is its best of 1, with the same sampling
        base = BestOfN(expert.model, expert.tokenizer, expert.decoding, 1, None, expert.seed_offset)
        drawing = {"policy": "best_of_1", "decoding": asdict(expert.decoding), "seed_offset": expert.seed_offset}
    identity = {"weights_sha256": weights_sha256(policy_dir(policy)), "dtype": dtype, "device": device, **drawing}
    return expert, KeptSamples(base, layout.cache, identity)


def split_prompts(
    curated: pd.DataFrame, irl, split: str, seed: int, held_out: set[str] | frozenset[str] = frozenset()
) -> pd.DataFrame:
    """The prompts of a split's pairs: a seeded sample of the pool (train, validation), or of every test prompt
    (irl.test_prompts; 0: all of them); never a prompt of `held_out` (the curated ids a dpo expert was trained on)."""
    rows = curated[(curated["split"] == split) & ~curated["id"].isin(held_out)]
    if split == "test":
        if irl.test_prompts == 0:
            return rows.reset_index(drop=True)
    elif irl.prompt_pool == "toxic":
        rows = rows[rows["label"] == 1]
    count = getattr(irl, f"{split}_prompts")  # irl.train_prompts, irl.validation_prompts, irl.test_prompts
    aside = f" besides the {len(held_out)} the expert was trained on" if held_out else ""
    if split != "test" and irl.prompt_pool == "balanced":
        toxic_share = float(curated.loc[curated["split"] == "test", "label"].mean())
        wanted = {1: round(count * toxic_share), 0: count - round(count * toxic_share)}
        drawn = []
        for label, number in wanted.items():
            pool = rows[rows["label"] == label]
            if number > len(pool):
                raise DemonstrationError(
                    f"irl.{split}_prompts is {count}: {number} of label {label} for the test split's toxic share "
                    f"{toxic_share:.2f}, but the {split} split has {len(pool)} of them{aside}"
                )
            drawn.append(pool.sample(n=number, random_state=seed))
        return pd.concat(drawn).sample(frac=1, random_state=seed).reset_index(drop=True)
    if count > len(rows):
        pool = "" if split == "test" else f" in the pool '{irl.prompt_pool}'"
        raise DemonstrationError(
            f"irl.{split}_prompts is {count}, but the {split} split has {len(rows)} prompts{pool}{aside}"
        )
    return rows.sample(n=count, random_state=seed).reset_index(drop=True)


def exclusion_reason(expert: str, non_expert: str) -> str:
    """Why a pair carries no preference: an empty continuation, or two identical ones ('' if usable)."""
    if not expert.strip() or not non_expert.strip():
        return "empty continuation"
    if expert.strip() == non_expert.strip():
        return "identical continuations"
    return ""


def label_pairs(pairs: pd.DataFrame, split: str, r_star) -> pd.DataFrame:
    """Add split, R* of prompt + each continuation (NaN without R*), and the exclusion reason of every pair."""
    pairs = pairs.reset_index(drop=True).copy()
    pairs.insert(0, "split", split)
    pairs["expert_r_star"] = r_star_of(r_star, (pairs["prompt"] + pairs["expert"]).tolist())
    pairs["non_expert_r_star"] = r_star_of(r_star, (pairs["prompt"] + pairs["non_expert"]).tolist())
    pairs["excluded"] = [exclusion_reason(e, n) for e, n in zip(pairs["expert"], pairs["non_expert"])]
    return pairs


def generate_pairs(
    prompts: pd.DataFrame, expert, non_expert, samples: int, batch_size: int, seed: int, matched: bool = False
) -> pd.DataFrame:
    """`samples` pairs per prompt: the expert's and the non-expert's continuations, each drawn by its own policy
    (a prompt's samples from one prefill of it). The non-expert draws with seed + 1, or with `matched` with the
    expert's seed (common random numbers)."""
    texts = prompts["prompt"].tolist()
    expert_samples = expert.samples(texts, samples, batch_size, seed)
    non_expert_samples = non_expert.samples(texts, samples, batch_size, seed + (0 if matched else 1))
    frames = [
        pd.DataFrame(
            {
                "id": prompts["id"].to_numpy(),
                "prompt": texts,
                "label": prompts["label"].to_numpy(),
                "sample": sample,
                "expert": [drawn[sample] for drawn in expert_samples],
                "non_expert": [drawn[sample] for drawn in non_expert_samples],
            }
        )
        for sample in range(samples)
    ]
    return pd.concat(frames, ignore_index=True)


def build_demonstrations(
    layout: RunLayout,
    expert,
    non_expert,
    *,
    curated: pd.DataFrame,
    irl,
    r_star,
    seed: int,
) -> pd.DataFrame:
    """Pairs on IRL-train prompts (train split), validation prompts and every test prompt, labelled with R*; the
    expert and the non-expert as `demonstration_policies` gives them."""
    held_out = PolicyCard.read(layout.policy(EXPERT_REWARD)).held_out_prompt_ids
    frames = []
    for split in SPLITS:
        prompts = split_prompts(curated, irl, split, seed, held_out)
        pairs = generate_pairs(
            prompts,
            expert,
            non_expert,
            pairs_per_prompt(irl, split),
            irl.inference_batch_size,
            seed + 100_003 * SPLIT_SEED[split] + DRAW_SEED_STEP * irl.draw,
            matched=irl.matched and irl.decoding == "sampled",
        )
        frames.append(label_pairs(pairs, split, r_star))
    return pd.concat(frames, ignore_index=True)


def pairs_per_prompt(irl: IrlSettings, split: str) -> int:
    """`irl.samples_per_prompt` pairs per train and validation prompt (what IRL fits and chooses on), at most
    `irl.test_samples_per_prompt` per test prompt (only judged)."""
    if split == "test":
        return min(irl.samples_per_prompt, irl.test_samples_per_prompt)
    return irl.samples_per_prompt


def demonstration_counts(demonstrations: pd.DataFrame) -> dict[str, float]:
    """How many pairs each split has, and how many were excluded and why (irl.demos.* metrics)."""
    values = {}
    for split, group in demonstrations.groupby("split"):
        values[metric_names.demonstrations_metric(split, "pairs")] = len(group)
        values[metric_names.demonstrations_metric(split, "used")] = int((group["excluded"] == "").sum())
        for reason, key in (("empty continuation", "empty"), ("identical continuations", "identical")):
            count = int((group["excluded"] == reason).sum())
            values[metric_names.demonstrations_metric(split, f"excluded_{key}")] = count
    return values


def used_pairs(demonstrations: pd.DataFrame, split: str) -> pd.DataFrame:
    return demonstrations[(demonstrations["split"] == split) & (demonstrations["excluded"] == "")].reset_index(
        drop=True
    )


def pair_texts(pairs: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The texts a reward reads: prompt + continuation, as R* does during RLHF."""
    return (pairs["prompt"] + pairs["expert"]).tolist(), (pairs["prompt"] + pairs["non_expert"]).tolist()


def load_demonstrations(layout: RunLayout) -> pd.DataFrame:
    if not layout.demonstrations.is_file():
        raise FileNotFoundError(f"{layout.demonstrations}: no demonstrations; run stage 04_irl first")
    return pd.read_parquet(layout.demonstrations)
