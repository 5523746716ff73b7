"""Which hidden-state layer the IRL reward reads (`irl.layer`), and how it pools it (`irl.pooling`), chosen on
validation from a run's demonstrations.

With `irl.layer: 0` and `irl.pooling: auto` (the defaults) notebook 04 makes this choice itself, before it fits
anything (`reward_reader`); `irlnb layers` repeats it on a finished run, for other layers or more seeds. For each
candidate (layer, pooling) the IRL-train and validation pairs are read through the frozen backbone in that form
(every candidate from one forward pass, cached as 04 caches its features), mapped as 04 maps them (standardised on
the train texts, what a text said twice moves removed: `irlnb.irl.repetition`), and the objective whose epochs 04
fits (`irlnb.objectives.epochs_objective`) is fitted over seeds exactly as 04 fits it; each fit's epoch is chosen by
validation pair accuracy, the study's selection metric, which needs no R*. The candidate with the highest mean
validation pair log-likelihood over seeds is chosen (`LAYER_CRITERION`). The validation ROC-AUC against R* (human
texts) is reported beside it for reading, never for the choice: the form an R*-holder would pick is a reference, not
an auditor's. No test text is read, so the choice leaves the test split untouched.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from irlnb import metric_names
from irlnb.config import AUTO_LAYER
from irlnb.errors import IrlnbError
from irlnb.irl import repetition
from irlnb.irl.demonstrations import load_demonstrations, pair_texts, used_pairs
from irlnb.irl.feature_sets import (
    PairSet,
    Reading,
    Standardizer,
    TextSet,
    cached_readings,
    prompt_ids,
    reading,
    rewards_of,
)
from irlnb.irl.fitting import SeededFit, fit_head
from irlnb.irl.halves import halves
from irlnb.irl.judging import SELECTION_METRIC, chosen_epoch, judge
from irlnb.layout import RunLayout
from irlnb.models.policies import model_depth, policy_dir
from irlnb.objectives import AUTO, epochs_objective
from irlnb.rewards.features import POOLINGS, FeatureReward, decoder_blocks, reward_form
from irlnb.rewards.ground_truth import load_scores


class LayerChoiceError(IrlnbError, ValueError):
    """Layers the backbone does not have, or a run without enough demonstrations to choose on."""


# What layers are ranked by: each fit's validation pair log-likelihood at its best scale (irlnb.metrics), which needs
# no R* and, unlike pair accuracy (0.94-0.995 at every block of the recorded sweeps), does not saturate. The sweeps
# recorded before it (regress/layers-*.metrics.json) were ranked by pair accuracy.
LAYER_CRITERION = "validation_pair_log_likelihood"
# `irlnb layers --split-half`: how alike the heads fitted on two halves of the IRL-train pairs (split by prompt) order
# the validation human texts (Spearman); R*-free, read beside the criterion, not ranked by
SPLIT_HALF = "validation_split_half_spearman"
SEEDS = 3  # head seeds per candidate layer, in notebook 04's choice and by default in `irlnb layers`


def candidate_layers(depth: int) -> list[int]:
    """Blocks at a quarter, half, three quarters and seven eighths of the depth, the last block, and -1 (the final
    normed state): a coarse sweep whose upper half is denser, where reward-like features were found (README)."""
    blocks = {max(1, round(depth * share)) for share in (0.25, 0.5, 0.75, 0.875)} | {depth}
    return [*sorted(blocks), -1]


def validation_sets(
    features: Reading, demonstrations: pd.DataFrame, human: pd.DataFrame, irl
) -> tuple[PairSet, PairSet, TextSet]:
    """IRL-train pairs, validation pairs and validation human texts read by `features` (`reading`), mapped as 04 maps
    them (`irlnb.irl.repetition.standardizer`: standardised on train, what repetition moves removed)."""
    pairs = {split: used_pairs(demonstrations, split) for split in ("train", "validation")}
    raw = {split: [features(side) for side in pair_texts(rows)] for split, rows in pairs.items()}
    standardizer, _ = repetition.standardizer(
        features,
        demonstrations,
        human["text"].tolist(),
        irl.length_probes,
        irl.max_repetition_shift,
        until_chosen=True,
    )

    def pair_set(split: str) -> PairSet:
        (expert, non_expert), rows = raw[split], pairs[split]
        no_labels = np.full(len(rows), -1)
        return PairSet(
            TextSet(standardizer(expert), rows["expert_r_star"].to_numpy(), no_labels),
            TextSet(standardizer(non_expert), rows["non_expert_r_star"].to_numpy(), no_labels),
        )

    human_features = standardizer(features(human["text"].tolist()))
    return (
        pair_set("train"),
        pair_set("validation"),
        TextSet(human_features, human["reward"].to_numpy(), human["label"].to_numpy()),
    )


def candidate_forms(irl, depth: int, layers: list[int] | None = None) -> list[tuple[int, str]]:
    """The (layer, pooling) pairs a choice compares: `layers` (None: `irl.layer`, or with `AUTO_LAYER`
    `candidate_layers(depth)`) each with `irl.pooling`, or with `AUTO` every pooling."""
    if layers is None:
        layers = candidate_layers(depth) if irl.layer == AUTO_LAYER else [irl.layer]
    poolings = POOLINGS if irl.pooling == AUTO else (irl.pooling,)
    return [(layer, pooling) for layer in layers for pooling in poolings]


def layer_rows(
    layout: RunLayout,
    irl,
    policy: str,
    layers: list[int] | None,
    seeds: int,
    dtype: str,
    device: str,
    average: bool = False,
    split_half: bool = False,
) -> pd.DataFrame:
    """`sweep_rows` on a finished 04_irl's demonstrations (`irlnb layers`; `average`: with the averaged reading;
    `split_half`: with each head's agreement across halves of the demonstrations).
    `layers` None: `candidate_layers` of the backbone. Refuses a layer the backbone does not have before any weights
    load."""
    depth = model_depth(policy_dir(policy))  # checked before weights load
    layers = layers or candidate_layers(depth)
    unknown = [layer for layer in layers if not (layer == -1 or 1 <= layer <= depth)]
    if unknown:
        raise LayerChoiceError(
            f"layers {unknown} do not exist: {policy} has blocks 1..{depth} (or -1, the final normed state)"
        )
    demonstrations = load_demonstrations(layout)
    human = load_scores(layout).query("split == 'validation'")
    final = reward_form(policy, POOLINGS[0], -1, irl.max_length, dtype=dtype, device=device)  # loaded once
    forms = candidate_forms(irl, depth, layers)
    return sweep_rows(final, demonstrations, human, layout.cache, irl, forms, seeds, average, split_half)


def sweep_rows(
    final: FeatureReward,
    demonstrations: pd.DataFrame,
    human: pd.DataFrame,
    cache: Path,
    irl,
    forms: list[tuple[int, str]],
    seeds: int,
    average: bool = False,
    split_half: bool = False,
) -> pd.DataFrame:
    """One row per (layer, pooling, seed): the chosen epoch's validation pair log-likelihood and accuracy, and its
    ROC-AUC against R* on the validation `human` texts (NaN without R*); with `split_half`, also `SPLIT_HALF`
    (`split_half_spearman`: the same seed's fit on each half of the train pairs). `final` is a reward form of any
    layer and pooling: each form is read through its backbone, every form from one forward pass per text. With
    `average`, also the mean over the forms' blocks of their mean-pooled states (`averaged_reading`; as layer
    `metric_names.AVERAGE_LAYER`), which reads every depth swept without choosing one."""
    pairs = {split: used_pairs(demonstrations, split) for split in ("train", "validation")}
    for split, split_pairs in pairs.items():
        if len(split_pairs) < 2:
            raise LayerChoiceError(f"only {len(split_pairs)} usable {split} pairs: too few to choose a layer on")
    check = human["text"].tolist()
    blocks = list(dict.fromkeys(layer for layer, _ in forms))
    read_forms = list(dict.fromkeys([*forms, *((layer, "mean") for layer in blocks if average)]))
    lists = repetition.texts_read(demonstrations, check, irl.length_probes)
    for texts in lists if check in lists else [*lists, check]:  # what `validation_sets` reads, each list once
        cached_readings(final, texts, read_forms, cache, irl.inference_batch_size)  # below, every read hits
    fit = SeededFit.from_settings(irl, epochs_objective(irl.loss))
    readings = [
        ((layer, pooling), reading(reader_of(final, layer, pooling), cache, irl.inference_batch_size))
        for layer, pooling in forms
    ]
    if average:
        averaged = averaged_reading(final, blocks, demonstrations, cache, irl)
        readings.append(((metric_names.AVERAGE_LAYER, "mean"), averaged))
    rows = []
    for (layer, pooling), features in readings:
        train, validation, validation_human = validation_sets(features, demonstrations, human, irl)

        def on_validation(epoch: int, head: torch.nn.Linear, validation=validation, human=validation_human) -> dict:
            return judge(head, human, validation, 0.0)

        train = PairSet(train.expert, train.non_expert, prompt_ids(pairs["train"]))  # halves split by prompt
        for seed in range(seeds):
            history, _ = fit_head(train, fit, seed, on_validation)
            epoch = chosen_epoch(history)
            agreement = (
                {SPLIT_HALF: split_half_spearman(train, fit, seed, on_validation, validation_human)}
                if split_half
                else {}
            )
            rows.append(
                {
                    "layer": layer,
                    "pooling": pooling,
                    "seed": seed,
                    "epoch": epoch,
                    LAYER_CRITERION: history[epoch]["pair_log_likelihood"],
                    f"validation_{SELECTION_METRIC}": history[epoch][SELECTION_METRIC],
                    "validation_auc": history[epoch].get("human_auc", np.nan),  # none in a run without R*
                    **agreement,
                }
            )
    return pd.DataFrame(rows)


def split_half_spearman(train: PairSet, fit: SeededFit, seed: int, on_validation, human: TextSet) -> float:
    """Spearman correlation of two heads' rewards of the `human` texts, each fitted as the sweep fits one (`seed`,
    the epoch chosen by `on_validation`) on one half of `train` (`irlnb.irl.halves.halves`, split by prompt): how
    far the demonstrations pin down the order of texts they do not contain. Needs no R*."""
    rewards = []
    for half in halves(train, seed):
        history, heads = fit_head(half, fit, seed, on_validation)
        rewards.append(rewards_of(heads[chosen_epoch(history)], human))
    return float(spearmanr(*rewards).statistic)


def averaged_reading(
    final: FeatureReward, blocks: list[int], demonstrations: pd.DataFrame, cache: Path, irl
) -> Reading:
    """The mean over `blocks` of each block's mean-pooled state standardised on the IRL-train texts (so that no depth
    weighs more for the scale of its states): a reading of every depth at once, which needs no choice of one."""
    train = pair_texts(used_pairs(demonstrations, "train"))
    per_block = [reading(reader_of(final, block, "mean"), cache, irl.inference_batch_size) for block in blocks]
    scales = [Standardizer.fit(torch.cat([features(side) for side in train])) for features in per_block]

    def averaged(texts: list[str]) -> torch.Tensor:
        return torch.stack([scale(features(texts)) for features, scale in zip(per_block, scales)]).mean(dim=0)

    return averaged


def reader_of(form: FeatureReward, layer: int, pooling: str) -> FeatureReward:
    """A reward form like `form` (its backbone shared, not copied) reading `layer` pooled by `pooling`."""
    spec = replace(form.spec, layer=layer, pooling=pooling)
    return FeatureReward(spec, form.backbone, form.tokenizer, form.head)


def reward_reader(
    policy: str, irl, demonstrations: pd.DataFrame, human: pd.DataFrame, cache: Path, dtype: str, device: str
) -> tuple[FeatureReward, pd.DataFrame]:
    """The reward form notebook 04 fits its heads on: at `irl.layer` pooled by `irl.pooling`, or where either is
    left to the choice (`irlnb.config.AUTO_LAYER`, `AUTO`) the candidate form ranked first by `LAYER_CRITERION`
    over `SEEDS` head seeds (`layer_table`, returned; empty when both were given).
    `human`: the validation split's human texts (their R* is read only for the table's validation ROC-AUC)."""
    if irl.layer != AUTO_LAYER and irl.pooling != AUTO:
        return reward_form(policy, irl.pooling, irl.layer, irl.max_length, dtype=dtype, device=device), pd.DataFrame()
    final = reward_form(policy, POOLINGS[0], -1, irl.max_length, dtype=dtype, device=device)
    forms = candidate_forms(irl, len(decoder_blocks(final.backbone)))
    table = layer_table(sweep_rows(final, demonstrations, human, cache, irl, forms, SEEDS))
    return reader_of(final, *chosen_form(table)), table


def layer_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean and SD over seeds per (layer, pooling), best first by validation pair log-likelihood (R*-free; pair
    accuracy, which saturates near 1 at every layer, beside it; ties: the shallower, cheaper layer)."""
    columns = [column for column in (LAYER_CRITERION, f"validation_{SELECTION_METRIC}", SPLIT_HALF) if column in rows]
    criterion = columns[0]
    table = rows.groupby(["layer", "pooling"])[[*columns, "validation_auc"]].agg(["mean", "std"])
    table.columns = [f"{metric}_{stat}" for metric, stat in table.columns]
    table = table.reset_index()
    depth_order = table["layer"].where(table["layer"] > 0, np.inf)  # the final state and the average: the dearest
    return (
        table.assign(_depth=depth_order)
        .sort_values([f"{criterion}_mean", "_depth", "pooling"], ascending=[False, True, True])
        .drop(columns="_depth")
        .reset_index(drop=True)
    )


def chosen_form(table: pd.DataFrame) -> tuple[int, str]:
    """The (layer, pooling) ranked first."""
    return int(table["layer"].iloc[0]), str(table["pooling"].iloc[0])


def chosen_layer(table: pd.DataFrame) -> int:
    return chosen_form(table)[0]


def layer_metrics(table: pd.DataFrame, seeds: int, prefix: str = metric_names.LAYERS) -> dict[str, float]:
    """The choice as flat metrics: <prefix><block or final>.<metric>_{mean,std} (<prefix><block>.<pooling>.<metric>
    where poolings were compared), <prefix>chosen (the block), <prefix>seeds (a metric not measured, the validation
    ROC-AUC of a run without R*, is left out); `prefix` `layers.` for `irlnb layers`' record, `irl.layers.` for stage
    04's own choice. Which pooling won is in the table's first row and the saved reward's form."""
    compared = table["pooling"].nunique() > 1
    values = {
        metric_names.layer_metric(int(row["layer"]), column, prefix, row["pooling"] if compared else None): float(
            row[column]
        )
        for _, row in table.iterrows()
        for column in table.columns
        if column not in ("layer", "pooling") and not pd.isna(row[column])
    }
    chosen = {
        metric_names.layers_chosen(prefix): float(chosen_layer(table)),
        metric_names.layers_seeds(prefix): float(seeds),
    }
    return {**values, **chosen}
