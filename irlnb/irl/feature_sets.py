"""The frozen features IRL fits on: read once per text through the reward's backbone, cached on disk,
standardised with the IRL-train texts' mean and std.

With a frozen backbone the same texts always give the same features, so refitting heads with other
objectives (or reopening the notebook) skips the backbone entirely, and an epoch is a few matrix
products. The saved reward folds the standardisation into its head (`Standardizer.fold`), so it is
a plain linear head on raw features.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from irlnb import metric_names, metrics
from irlnb.compute import frozen_cached
from irlnb.irl.demonstrations import pair_texts, used_pairs
from irlnb.irl.within_prompt import text_statistics
from irlnb.metric_names import SPLITS
from irlnb.rewards.features import FeatureReward, HeadPosterior
from irlnb.rewards.likelihood import token_log_probs


@dataclass
class TextSet:
    """Standardised features of some texts, with their R* (and human labels, -1 where there are none), and, for the
    texts a reward's correlates are read on, their simple statistics (`irlnb.irl.within_prompt.text_statistics`)."""

    features: torch.Tensor
    r_star: np.ndarray
    labels: np.ndarray
    statistics: pd.DataFrame | None = None
    # For the texts a reward's length is probed on: the features of each text said twice (`repeated`)
    repeated: torch.Tensor | None = None


def repeated(text: str) -> str:
    """The same text said twice over: what it says is unchanged, its length doubled."""
    return f"{text} {text}"


@dataclass
class PairSet:
    expert: TextSet
    non_expert: TextSet
    # The prompt of each pair, as an id shared by the pairs drawn on one prompt (`prompt_ids`): the groups a
    # reward is canonicalised over for its STARC distance. None where the pairs have no prompts (synthetic ones).
    prompt_ids: np.ndarray | None = None


def prompt_ids(pairs: pd.DataFrame) -> np.ndarray:
    """One integer per pair naming its prompt (pairs drawn on the same prompt text share it)."""
    return pd.factorize(pairs["prompt"])[0]


def base_comparison_pairs(pairs: pd.DataFrame, base: TextSet) -> PairSet | None:
    """R*'s own comparisons of base samples: on each prompt with two used pairs or more, the base (non-expert)
    texts of its first two samples, the one with the higher R* as the preferred ('expert') side.

    `pairs` are a split's used pairs (`used_pairs`) and `base` their non-expert texts, row for row, so the
    features are the cached ones. Two texts with equal R* or the same continuation carry no preference and are
    dropped. None when no prompt has two comparable samples (one sample per prompt, greedy decoding), or without R*.
    """
    if not metrics.has_r_star(pairs["non_expert_r_star"]):
        return None
    first, second = [], []
    for _, rows in pairs.sort_values("sample", kind="stable").groupby("prompt", sort=False):
        if len(rows) < 2:
            continue
        a, b = rows.index[:2]
        r_a, r_b = pairs.at[a, "non_expert_r_star"], pairs.at[b, "non_expert_r_star"]
        if r_a == r_b or pairs.at[a, "non_expert"].strip() == pairs.at[b, "non_expert"].strip():
            continue
        preferred, other = (a, b) if r_a > r_b else (b, a)
        first.append(preferred)
        second.append(other)
    if not first:
        return None
    ids = prompt_ids(pairs)

    def side(index: list[int]) -> TextSet:
        return TextSet(base.features[index], base.r_star[index], base.labels[index])

    return PairSet(side(first), side(second), ids[first])


def rewards_of(head: torch.nn.Linear, texts: TextSet) -> np.ndarray:
    return head_scores(head, texts.features)


def head_scores(head: torch.nn.Linear, features: torch.Tensor) -> np.ndarray:
    """A head's reward of each row of `features`, as float64."""
    with torch.no_grad():
        return head(features).squeeze(-1).double().numpy()


@dataclass
class Standardizer:
    """x -> (x - mean) / std, fitted on the IRL-train texts; with a `nuisance` basis (orthonormal columns in the
    standardised space), the features' part along it is removed too, so no head can read it
    (`irlnb.irl.repetition`: the directions along which a text's features move when it is said twice over)."""

    mean: torch.Tensor
    std: torch.Tensor
    nuisance: torch.Tensor | None = None

    @classmethod
    def fit(cls, features: torch.Tensor) -> Standardizer:
        return cls(features.mean(dim=0), features.std(dim=0).clamp_min(1e-6))

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        standardised = (features - self.mean) / self.std
        return standardised if self.nuisance is None else self._without_nuisance(standardised)

    def _without_nuisance(self, rows: torch.Tensor) -> torch.Tensor:
        basis = self.nuisance.to(rows.dtype)
        return rows - (rows @ basis) @ basis.T

    def fold(self, head: torch.nn.Linear) -> torch.nn.Linear:
        """The same reward as a head on raw features: w' = P w / std, b' = b - w' . mean (P removes the nuisance)."""
        folded = torch.nn.Linear(head.in_features, 1)
        weight = head.weight if self.nuisance is None else self._without_nuisance(head.weight)
        with torch.no_grad():
            folded.weight.copy_(weight / self.std)
            folded.bias.copy_(head.bias - (folded.weight * self.mean).sum())
        return folded

    def fold_covariance(self, covariance: torch.Tensor) -> HeadPosterior:
        """A covariance on standardised features as one on raw features: D^-1 P Sigma P D^-1, centred at the mean."""
        covariance = covariance.double()
        if self.nuisance is not None:
            covariance = self._without_nuisance(self._without_nuisance(covariance).T).T
        scale = 1.0 / self.std.double()
        return HeadPosterior(self.mean.double(), covariance * scale[:, None] * scale[None, :])


def cached_features(reader: FeatureReward, texts: list[str], cache_dir: Path, batch_size: int) -> torch.Tensor:
    """Features of `texts`, kept in `cache_dir` under the reward form (its backbone's sha256 among them) and the
    texts (`frozen_cached`)."""
    form = (reader.spec.layer, reader.spec.pooling)
    return cached_readings(reader, texts, [form], cache_dir, batch_size)[form]


Reading = Callable[[list[str]], torch.Tensor]  # texts -> their raw features, one row per text


def reading(reader: FeatureReward, cache_dir: Path, batch_size: int) -> Reading:
    """`cached_features` of `reader` as a function of the texts alone (what a map fitted on features reads)."""
    return partial(cached_features, reader, cache_dir=cache_dir, batch_size=batch_size)


def cached_readings(
    reader: FeatureReward, texts: list[str], forms: list[tuple[int, str]], cache_dir: Path, batch_size: int
) -> dict[tuple[int, str], torch.Tensor]:
    """`cached_features` of `texts` read in each (layer, pooling) of `forms`, each kept as a reader of that form
    keeps it (a later `cached_features` in one of them finds it); what is missing comes from one forward pass for
    every form."""
    read_once: dict[tuple[int, str], torch.Tensor] = {}

    def read(form: tuple[int, str]) -> torch.Tensor:
        if not read_once:
            read_once.update(reader.features_at(texts, forms, batch_size))
        return read_once[form]

    return {
        form: frozen_cached(
            cache_dir,
            "features",
            [asdict(replace(reader.spec, layer=form[0], pooling=form[1])), texts],
            lambda form=form: read(form),
            lambda kept: isinstance(kept, torch.Tensor) and kept.shape == (len(texts), reader.head.in_features),
        )
        for form in forms
    }


def mean_log_likelihood(reader: FeatureReward, texts: list[str], batch_size: int) -> torch.Tensor:
    """The reward's backbone (the base model) read as a language model: the mean log-probability of each text's
    tokens after its first (as the reward tokenizes it, up to its max_length), float64 [n]."""

    def mean_log_prob(batch) -> torch.Tensor:
        mask = batch["attention_mask"]
        log_probs = token_log_probs(reader.backbone, batch["input_ids"], mask).double()
        counted = mask[:, 1:] * mask[:, :-1]  # a token after a real one (either padding side)
        return (log_probs * counted).sum(dim=1) / counted.sum(dim=1).clamp(min=1)

    return reader.per_text(texts, batch_size, "base log-likelihood", mean_log_prob)


def cached_log_likelihood(reader: FeatureReward, texts: list[str], cache_dir: Path, batch_size: int) -> torch.Tensor:
    """`mean_log_likelihood`, kept in `cache_dir` under the backbone's sha256, its dtype and the texts."""
    spec = reader.spec
    return frozen_cached(
        cache_dir,
        "log_likelihood",
        [spec.backbone_sha256, spec.dtype, spec.max_length, texts],
        lambda: mean_log_likelihood(reader, texts, batch_size),
        lambda kept: isinstance(kept, torch.Tensor) and kept.shape == (len(texts),),
    )


@dataclass
class FeatureSets:
    train: PairSet
    validation: tuple[TextSet, PairSet]
    test: tuple[TextSet, PairSet]
    test_texts: dict[str, list[str]]
    standardizer: Standardizer
    # R*'s own comparisons of base samples (train, validation), see `base_comparison_pairs`; None when either
    # split has fewer than two (one sample per prompt)
    base_comparisons: tuple[PairSet, PairSet] | None = None
    # The test prompts' continuations (base samples and the human one) and each one's prompt group
    # (`irlnb.irl.within_prompt`); None when irl.within_prompt_samples is 0
    within_prompt: tuple[TextSet, np.ndarray] | None = None


def build_feature_sets(
    reader: FeatureReward,
    demonstrations: pd.DataFrame,
    scores: pd.DataFrame,
    cache_dir: Path,
    batch_size: int,
    prompt_sets: pd.DataFrame | None = None,
    standardizer: Standardizer | None = None,
) -> FeatureSets:
    """Standardised features of every text the study reads, a batched pass over the backbone per block of texts
    (with `prompt_sets`, `irlnb.irl.within_prompt.draw_prompt_sets`, the test prompts' continuations too; the
    validation and test human texts also said twice, `repeated`). `standardizer` maps raw features to what heads read
    (None: standardised on the IRL-train texts; `irlnb.irl.repetition.standardizer` also removes what a text said
    twice moves)."""
    blocks: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = {}
    split_pairs = {}
    for split in SPLITS:
        pairs = split_pairs[split] = used_pairs(demonstrations, split)
        if len(pairs) < 2:
            raise ValueError(
                f"only {len(pairs)} usable {split} demonstration pairs "
                f"(see {metric_names.demonstrations_metric(split, '*')} for exclusions)"
            )
        expert_texts, non_expert_texts = pair_texts(pairs)
        no_labels = np.full(len(pairs), -1)
        blocks[f"{split}_expert"] = (expert_texts, pairs["expert_r_star"].to_numpy(), no_labels)
        blocks[f"{split}_non_expert"] = (non_expert_texts, pairs["non_expert_r_star"].to_numpy(), no_labels)
    for split in ("validation", "test"):
        human = scores[scores["split"] == split]
        blocks[f"{split}_human"] = (human["text"].tolist(), human["reward"].to_numpy(), human["label"].to_numpy())
    for split in ("validation", "test"):  # said twice: what a reward pays for length (test: judged; validation: chosen)
        human = blocks[f"{split}_human"]
        blocks[f"{split}_human_repeated"] = ([repeated(text) for text in human[0]], *human[1:])
    if prompt_sets is not None and len(prompt_sets):
        texts = (prompt_sets["prompt"] + prompt_sets["continuation"]).tolist()
        blocks["within_prompt"] = (texts, prompt_sets["r_star"].to_numpy(), np.full(len(texts), -1))
    # block by block, so that a block another run read (the human texts, the base's samples) comes from the cache
    sets = {
        name: (cached_features(reader, block_texts, cache_dir, batch_size), r_star, labels)
        for name, (block_texts, r_star, labels) in blocks.items()
    }
    standardizer = standardizer or Standardizer.fit(torch.cat([sets["train_expert"][0], sets["train_non_expert"][0]]))
    text_set = {name: TextSet(standardizer(f), r, lab) for name, (f, r, lab) in sets.items()}
    test_texts = blocks["test_human"][0]
    likelihood = cached_log_likelihood(reader, test_texts, cache_dir, batch_size)
    text_set["test_human"].statistics = text_statistics(test_texts, reader.tokenizer, likelihood.numpy())
    for split in ("validation", "test"):
        text_set[f"{split}_human"].repeated = text_set.pop(f"{split}_human_repeated").features

    def pair_set(split):
        return PairSet(text_set[f"{split}_expert"], text_set[f"{split}_non_expert"], prompt_ids(split_pairs[split]))

    comparisons = tuple(
        base_comparison_pairs(split_pairs[split], text_set[f"{split}_non_expert"]) for split in ("train", "validation")
    )
    enough = all(c is not None and len(c.expert.r_star) >= 2 for c in comparisons)

    test_texts = {
        "human": blocks["test_human"][0],
        "expert": blocks["test_expert"][0],
        "non_expert": blocks["test_non_expert"][0],
    }
    return FeatureSets(
        pair_set("train"),
        (text_set["validation_human"], pair_set("validation")),
        (text_set["test_human"], pair_set("test")),
        test_texts,
        standardizer,
        comparisons if enough else None,
        (text_set["within_prompt"], prompt_sets["group"].to_numpy()) if "within_prompt" in text_set else None,
    )
