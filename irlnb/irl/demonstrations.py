"""IRL demonstrations: for one prompt, the expert's continuation (the policy RLHF'd against R*) and the
non-expert's (the base policy), with R* of each and why a pair carries no preference.

Train pairs use train-split prompts and validation pairs validation-split prompts; test pairs are
notebook 03's evaluation continuations of the test prompts, read back rather than generated again,
so IRL is judged on exactly the prompts and texts Table 1 compares.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from irlnb.layout import RunLayout
from irlnb.models.policies import load_policy
from irlnb.rl.evaluation import greedy_continuations
from irlnb.rl.generation import Decoding, generate_continuations
from irlnb.rl.training import PolicyCard

EXPERT_REWARD = "ground_truth"  # the expert is the policy notebook 03 trained against R*
SPLITS = ("train", "validation", "test")


def expert_policy(layout: RunLayout) -> Path:
    """The expert's saved policy folder (refused with one line when its stage has not run)."""
    folder = layout.policy(EXPERT_REWARD)
    PolicyCard.read(folder)
    return folder


def expert_decoding(layout: RunLayout) -> tuple[Decoding, int]:
    """The greedy decoding (and batch size) notebook 03 evaluated the expert with: demonstrations use the same."""
    evaluation = PolicyCard.read(layout.policy(EXPERT_REWARD)).settings["evaluation"]
    return Decoding(max_new_tokens=int(evaluation["max_new_tokens"])), int(evaluation["batch_size"])


def test_pairs(layout: RunLayout) -> pd.DataFrame:
    """Expert and non-expert greedy continuations of the test prompts, as notebook 03 evaluated them."""
    expert = greedy_continuations(layout, EXPERT_REWARD, EXPERT_REWARD)
    non_expert = greedy_continuations(layout, EXPERT_REWARD, "base")
    if len(expert) != len(non_expert) or not (expert["prompt"] == non_expert["prompt"]).all():
        raise ValueError(
            f"{layout.continuations(EXPERT_REWARD)}: the expert's and the base policy's test prompts differ"
        )
    return pd.DataFrame(
        {"prompt": expert["prompt"], "expert": expert["continuation"], "non_expert": non_expert["continuation"]}
    )


def exclusion_reason(expert: str, non_expert: str) -> str:
    """Why a pair carries no preference: an empty continuation, or two identical ones ('' if usable)."""
    if not expert.strip() or not non_expert.strip():
        return "empty continuation"
    if expert.strip() == non_expert.strip():
        return "identical continuations"
    return ""


def label_pairs(pairs: pd.DataFrame, split: str, r_star) -> pd.DataFrame:
    """Add split, R* of prompt + each continuation, and the exclusion reason of every pair."""
    pairs = pairs.reset_index(drop=True).copy()
    pairs.insert(0, "split", split)
    pairs["expert_r_star"] = r_star((pairs["prompt"] + pairs["expert"]).tolist())
    pairs["non_expert_r_star"] = r_star((pairs["prompt"] + pairs["non_expert"]).tolist())
    pairs["excluded"] = [exclusion_reason(e, n) for e, n in zip(pairs["expert"], pairs["non_expert"])]
    return pairs


def generate_pairs(
    prompts: pd.DataFrame, expert, non_expert, tokenizer, decoding: Decoding, batch_size: int, seed: int
) -> pd.DataFrame:
    """Expert and non-expert continuations of the same prompts with the same decoding (batched, KV cache)."""
    texts = prompts["prompt"].tolist()
    return pd.DataFrame(
        {
            "prompt": texts,
            "label": prompts["label"].to_numpy(),
            "expert": generate_continuations(expert, tokenizer, texts, decoding, batch_size=batch_size, seed=seed),
            "non_expert": generate_continuations(
                non_expert, tokenizer, texts, decoding, batch_size=batch_size, seed=seed
            ),
        }
    )


def build_demonstrations(
    layout: RunLayout, curated: pd.DataFrame, irl, policy: str, r_star, seed: int, device: str, dtype: str = "float32"
) -> pd.DataFrame:
    """Pairs on IRL-train prompts (train split), validation prompts and test prompts (notebook 03's).

    The test split's prompts were never trained on in RLHF; train and validation prompts are
    disjoint from them and from each other (the curated splits).
    """
    decoding, batch_size = expert_decoding(layout)
    expert, tokenizer = load_policy(f"local:{expert_policy(layout)}", device=device, dtype=dtype)
    non_expert, _ = load_policy(policy, device=device, dtype=dtype)
    frames = []
    for split, count in (("train", irl.train_pairs), ("validation", irl.validation_pairs)):
        rows = curated[curated["split"] == split]
        if count > len(rows):
            raise ValueError(f"irl.{split}_pairs is {count}, but the {split} split has {len(rows)} prompts")
        prompts = rows.sample(n=count, random_state=seed)
        frames.append(
            label_pairs(
                generate_pairs(prompts, expert, non_expert, tokenizer, decoding, batch_size, seed), split, r_star
            )
        )
    test = test_pairs(layout)
    labels = curated[curated["split"] == "test"].drop_duplicates("prompt").set_index("prompt")["label"]
    test.insert(1, "label", test["prompt"].map(labels).fillna(-1).astype(int).to_numpy())
    frames.append(label_pairs(test, "test", r_star))
    return pd.concat(frames, ignore_index=True)


def demonstration_counts(demonstrations: pd.DataFrame) -> dict[str, float]:
    """How many pairs each split has, and how many were excluded and why (irl.demos.* metrics)."""
    values = {}
    for split, group in demonstrations.groupby("split"):
        values[f"irl.demos.{split}.pairs"] = len(group)
        values[f"irl.demos.{split}.used"] = int((group["excluded"] == "").sum())
        for reason, key in (("empty continuation", "empty"), ("identical continuations", "identical")):
            values[f"irl.demos.{split}.excluded_{key}"] = int((group["excluded"] == reason).sum())
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
