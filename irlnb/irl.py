"""Step 4 of the paper: max-margin IRL of a reward from demonstrations, judged against R* on held-out data.

Demonstrations pair, for one prompt, the expert's continuation (the policy RLHF'd against R*) with
the non-expert's (the base policy), both greedy. A reward R(x) = w . phi(x) + b on backbone features
(`irlnb.reward_model`) is fitted so that the expert's text scores higher. What differs from the
reference code, on purpose: the reward reads the whole text (not its last character); gradients
are zeroed every step; the max-margin objective has a margin and a bound on |w|; every epoch is
judged after its updates, on validation only; epochs and thresholds are chosen on validation;
test numbers are computed once, for every seed, and reported as mean and SD over seeds.

With a frozen backbone the features are computed once and cached, so an epoch is a few matrix
products. Features are standardised with the IRL-train texts' mean and std; the saved head folds
that map in, so the saved reward is a plain linear head on raw features.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from scipy.stats import kendalltau, pearsonr, spearmanr

from irlnb import metrics

LOSSES = ("max_margin", "paper_asymmetric", "logistic")
DEMONSTRATIONS_FILE = "demonstrations.parquet"
EXPERT_STAGE_OUTPUT = "rlhf_ground_truth"  # notebook 03's ground-truth run: the expert and the test continuations


# --------------------------------------------------------------------------------------------
# Demonstrations


def expert_policy_dir(run_dir: str | Path) -> Path:
    folder = Path(run_dir) / EXPERT_STAGE_OUTPUT / "policy"
    if not (folder / "irlnb_policy.json").is_file():
        raise FileNotFoundError(f"{folder}: no expert policy; run stage 03_rlhf_ground_truth first")
    return folder


def expert_decoding(run_dir: str | Path):
    """The greedy decoding notebook 03 evaluated with: demonstrations use the same one."""
    from irlnb.generation import Decoding

    about = json.loads((expert_policy_dir(run_dir) / "irlnb_policy.json").read_text())
    rlhf = about["settings"]["rlhf"]
    return Decoding(max_new_tokens=int(rlhf["eval_max_new_tokens"])), int(rlhf["eval_batch_size"])


def test_demonstrations(run_dir: str | Path) -> pd.DataFrame:
    """Expert and non-expert greedy continuations of the test prompts, as notebook 03 evaluated them."""
    from irlnb.evaluation import greedy_continuations

    path = Path(run_dir) / EXPERT_STAGE_OUTPUT / "continuations.parquet"
    expert, non_expert = greedy_continuations(path, "ground_truth"), greedy_continuations(path, "base")
    if len(expert) != len(non_expert) or not (expert["prompt"] == non_expert["prompt"]).all():
        raise ValueError(f"{path}: the expert's and the base policy's test prompts differ")
    return pd.DataFrame({"prompt": expert["prompt"], "expert": expert["continuation"],
                         "non_expert": non_expert["continuation"]})


def exclusion_reason(expert: str, non_expert: str) -> str:
    """Why a pair carries no preference: an empty continuation, or two identical ones ('' if usable)."""
    if not expert.strip() or not non_expert.strip():
        return "empty continuation"
    if expert.strip() == non_expert.strip():
        return "identical continuations"
    return ""


def label_pairs(pairs: pd.DataFrame, split: str, r_star: Callable[[list[str]], np.ndarray]) -> pd.DataFrame:
    """Add split, R* of prompt + each continuation, and the exclusion reason of every pair."""
    pairs = pairs.reset_index(drop=True).copy()
    pairs.insert(0, "split", split)
    pairs["expert_r_star"] = r_star((pairs["prompt"] + pairs["expert"]).tolist())
    pairs["non_expert_r_star"] = r_star((pairs["prompt"] + pairs["non_expert"]).tolist())
    pairs["excluded"] = [exclusion_reason(e, n) for e, n in zip(pairs["expert"], pairs["non_expert"])]
    return pairs


def generate_pairs(prompts: pd.DataFrame, expert, non_expert, tokenizer, decoding, batch_size: int, seed: int) -> pd.DataFrame:
    """Expert and non-expert continuations of the same prompts with the same decoding (batched, KV cache)."""
    from irlnb.generation import generate_continuations

    texts = prompts["prompt"].tolist()
    return pd.DataFrame({
        "prompt": texts, "label": prompts["label"].to_numpy(),
        "expert": generate_continuations(expert, tokenizer, texts, decoding, batch_size=batch_size, seed=seed),
        "non_expert": generate_continuations(non_expert, tokenizer, texts, decoding, batch_size=batch_size, seed=seed),
    })


def demonstration_counts(demonstrations: pd.DataFrame) -> dict[str, float]:
    """How many pairs each split has, and how many were excluded and why (irl.demos.* metrics)."""
    values = {}
    for split, group in demonstrations.groupby("split"):
        values[f"irl.demos.{split}.pairs"] = len(group)
        values[f"irl.demos.{split}.used"] = int((group["excluded"] == "").sum())
        for reason, key in (("empty continuation", "empty"), ("identical continuations", "identical")):
            values[f"irl.demos.{split}.excluded_{key}"] = int((group["excluded"] == reason).sum())
    return values


# --------------------------------------------------------------------------------------------
# Objectives


def pair_loss(loss: str, advantage: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Mean loss over pairs, with advantage x = R(expert) - R(non-expert).

    paper_asymmetric: -x if x > 0 else -2x (the paper's, unbounded below: it rewards ever larger gaps);
    max_margin: max(0, margin - x) (the hinge; with a bound on |w| the classic max-margin IRL);
    logistic: log(1 + exp(-x)) (Bradley-Terry, i.e. maximum entropy over the pair).
    """
    if loss == "paper_asymmetric":
        return torch.where(advantage > 0, -advantage, -2 * advantage).mean()
    if loss == "max_margin":
        return torch.relu(margin - advantage).mean()
    if loss == "logistic":
        return torch.nn.functional.softplus(-advantage).mean()
    raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")


@dataclass(frozen=True)
class Objective:
    """How a head is fitted: the loss, its margin and bound, and the optimiser's schedule."""

    loss: str
    margin: float
    max_head_norm: float  # applied to max_margin only: the other two are the unbounded forms being compared
    learning_rate: float
    epochs: int
    batch_size: int

    @classmethod
    def from_settings(cls, irl, loss: str | None = None) -> "Objective":
        return cls(loss or irl.loss, irl.margin, irl.max_head_norm, irl.irl_learning_rate, irl.epochs, irl.pair_batch_size)


# --------------------------------------------------------------------------------------------
# Feature sets


@dataclass
class TextSet:
    """Standardised features of some texts, with their R* (and human labels, -1 where there are none)."""

    features: torch.Tensor
    r_star: np.ndarray
    labels: np.ndarray


@dataclass
class PairSet:
    expert: TextSet
    non_expert: TextSet


@dataclass
class Standardizer:
    """x -> (x - mean) / std, fitted on the IRL-train texts."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def fit(cls, features: torch.Tensor) -> "Standardizer":
        return cls(features.mean(dim=0), features.std(dim=0).clamp_min(1e-6))

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std

    def fold(self, head: torch.nn.Linear) -> torch.nn.Linear:
        """The same reward as a head on raw features: w' = w / std, b' = b - w' . mean."""
        folded = torch.nn.Linear(head.in_features, 1)
        with torch.no_grad():
            folded.weight.copy_(head.weight / self.std)
            folded.bias.copy_(head.bias - (folded.weight * self.mean).sum())
        return folded


def used_pairs(demonstrations: pd.DataFrame, split: str) -> pd.DataFrame:
    return demonstrations[(demonstrations["split"] == split) & (demonstrations["excluded"] == "")].reset_index(drop=True)


def pair_texts(pairs: pd.DataFrame) -> tuple[list[str], list[str]]:
    """The texts a reward reads: prompt + continuation, as R* does during RLHF."""
    return (pairs["prompt"] + pairs["expert"]).tolist(), (pairs["prompt"] + pairs["non_expert"]).tolist()


# --------------------------------------------------------------------------------------------
# Judging a reward against R*


def fit_threshold(r_hat: np.ndarray, r_star: np.ndarray) -> float:
    """The cut t that best separates toxic (R* <= 0) from non-toxic by R-hat <= t; a learned reward has no natural zero."""
    r_hat = np.asarray(r_hat, dtype=np.float64)
    toxic = metrics.toxic_by_reward(r_star)
    values = np.sort(r_hat)
    candidates = np.concatenate([[values[0] - 1.0], (values[1:] + values[:-1]) / 2, [values[-1] + 1.0]])
    accuracies = [np.mean((r_hat <= t) == toxic) for t in candidates]
    return float(candidates[int(np.argmax(accuracies))])


def agreement(r_hat: np.ndarray, r_star: np.ndarray, threshold: float = 0.0, labels: np.ndarray | None = None) -> dict[str, float]:
    """R-hat against R*: sign agreement and F1 (toxic = positive class), ROC-AUC, and rank/linear correlations.

    `auc` is the ROC-AUC of -R-hat for toxicity by sign(R*); `auc_human` the same against human
    labels (where given). Correlations are NaN when either side is constant.
    """
    r_hat, r_star = np.asarray(r_hat, dtype=np.float64), np.asarray(r_star, dtype=np.float64)
    toxic, predicted = metrics.toxic_by_reward(r_star), r_hat <= threshold
    values = {"accuracy": metrics.accuracy(predicted, toxic), "f1": metrics.f1(predicted, toxic)}
    values["auc"] = metrics.roc_auc(toxic, -r_hat) if 0 < toxic.sum() < len(toxic) else float("nan")
    if labels is not None and (labels >= 0).all() and 0 < labels.sum() < len(labels):
        values["auc_human"] = metrics.roc_auc(labels, -r_hat)
    constant = np.ptp(r_hat) == 0 or np.ptp(r_star) == 0
    for name, function in (("pearson", pearsonr), ("spearman", spearmanr), ("kendall", kendalltau)):
        values[name] = float("nan") if constant else float(function(r_hat, r_star)[0])
    return values


def pair_accuracy(r_expert: np.ndarray, r_non_expert: np.ndarray) -> float:
    """Share of pairs where the reward prefers the expert's text (ties count as wrong)."""
    return float(np.mean(np.asarray(r_expert) > np.asarray(r_non_expert)))


def rewards_of(head: torch.nn.Linear, texts: TextSet) -> np.ndarray:
    with torch.no_grad():
        return head(texts.features).squeeze(-1).double().numpy()


def judge(head: torch.nn.Linear, human: TextSet, pairs: PairSet, threshold: float) -> dict[str, float]:
    """Every metric of one head on one split: human texts, and the demonstrations (both sides)."""
    r_human = rewards_of(head, human)
    r_expert, r_non_expert = rewards_of(head, pairs.expert), rewards_of(head, pairs.non_expert)
    values = {f"human_{k}": v for k, v in agreement(r_human, human.r_star, threshold, human.labels).items()}
    values.update({f"human_{k}_zero": v for k, v in agreement(r_human, human.r_star, 0.0).items() if k in ("accuracy", "f1")})
    demo_r_hat = np.concatenate([r_expert, r_non_expert])
    demo_r_star = np.concatenate([pairs.expert.r_star, pairs.non_expert.r_star])
    values.update({f"demos_{k}": v for k, v in agreement(demo_r_hat, demo_r_star, threshold).items()})
    values["pair_accuracy"] = pair_accuracy(r_expert, r_non_expert)
    return values


# --------------------------------------------------------------------------------------------
# Fitting a head


def init_head(width: int, seed: int) -> torch.nn.Linear:
    """A head initialised from the seed alone (the non-identifiability study varies only this and data order)."""
    generator = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(width, 1)
    with torch.no_grad():
        head.weight.copy_(torch.randn(1, width, generator=generator) / width**0.5)
        head.bias.zero_()
    return head


def fit_head(train: PairSet, objective: Objective, seed: int,
             on_epoch: Callable[[int, torch.nn.Linear], dict]) -> tuple[list[dict], list[torch.nn.Linear]]:
    """Fit a linear head on cached features; returns per-epoch records and the head after each epoch.

    Epoch 0 is the initial head. `on_epoch(epoch, head)` is called after that epoch's updates
    (the reference code measured before them and saved under the wrong weights).
    """
    head = init_head(train.expert.features.shape[1], seed)
    optimizer = torch.optim.Adam(head.parameters(), lr=objective.learning_rate)
    order = torch.Generator().manual_seed(seed + 1)
    n = train.expert.features.shape[0]
    history, heads = [{"epoch": 0, "train_loss": float("nan"), **on_epoch(0, head)}], [copy.deepcopy(head)]
    for epoch in range(1, objective.epochs + 1):
        losses = []
        for batch in torch.randperm(n, generator=order).split(objective.batch_size):
            optimizer.zero_grad()
            advantage = (head(train.expert.features[batch]) - head(train.non_expert.features[batch])).squeeze(-1)
            loss = pair_loss(objective.loss, advantage, objective.margin)
            loss.backward()
            optimizer.step()
            if objective.loss == "max_margin":
                bound_norm(head, objective.max_head_norm)
            losses.append(loss.item())
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), **on_epoch(epoch, head)})
        heads.append(copy.deepcopy(head))
    return history, heads


def bound_norm(head: torch.nn.Linear, max_norm: float) -> None:
    """Project the head's weights back onto |w| <= max_norm (the max-margin bound)."""
    with torch.no_grad():
        norm = head.weight.norm()
        if norm > max_norm:
            head.weight.mul_(max_norm / norm)


# --------------------------------------------------------------------------------------------
# The study: losses x seeds, chosen on validation, scored once on test


SELECTION_METRIC = "pair_accuracy"  # validation pair accuracy: chosen from behaviour alone, without R*


@dataclass
class StudyResult:
    epochs: pd.DataFrame  # loss, seed, epoch, train_loss, validation metrics
    test: pd.DataFrame  # loss, seed, chosen epoch, threshold, test metrics
    scores: pd.DataFrame  # loss, seed, set, pair, text, r_star, r_hat, label, threshold: test rewards of every chosen head
    heads: dict[tuple[str, int], torch.nn.Linear]  # the chosen head of every (loss, seed), on standardised features


def run_study(train: PairSet, validation: tuple[TextSet, PairSet], test: tuple[TextSet, PairSet],
              test_texts: dict[str, list[str]], objectives: list[Objective], seeds: int) -> StudyResult:
    """Fit every objective over `seeds` seeds; choose each run's epoch on validation; score it once on test."""
    validation_human, validation_pairs = validation
    test_human, test_pairs = test
    epoch_rows, test_rows, score_frames, chosen_heads = [], [], [], {}
    for objective in objectives:
        for seed in range(seeds):
            def on_epoch(epoch, head):
                return judge(head, validation_human, validation_pairs, threshold=0.0)

            history, heads = fit_head(train, objective, seed, on_epoch)
            epoch_rows += [{"loss": objective.loss, "seed": seed, **row} for row in history]
            chosen = max(range(1, len(history)), key=lambda e: (history[e][SELECTION_METRIC], -e))
            head = heads[chosen]
            threshold = fit_threshold(rewards_of(head, validation_human), validation_human.r_star)
            test_rows.append({"loss": objective.loss, "seed": seed, "epoch": chosen, "threshold": threshold,
                              f"validation_{SELECTION_METRIC}": history[chosen][SELECTION_METRIC],
                              **judge(head, test_human, test_pairs, threshold)})
            score_frames.append(test_score_frame(head, test_human, test_pairs, test_texts, objective.loss, seed, threshold))
            chosen_heads[(objective.loss, seed)] = head
    return StudyResult(pd.DataFrame(epoch_rows), pd.DataFrame(test_rows), pd.concat(score_frames, ignore_index=True),
                       chosen_heads)


def test_score_frame(head, human: TextSet, pairs: PairSet, texts: dict[str, list[str]], loss: str, seed: int,
                     threshold: float) -> pd.DataFrame:
    frames = []
    for name, text_set in (("human", human), ("expert", pairs.expert), ("non_expert", pairs.non_expert)):
        n = len(text_set.r_star)
        frames.append(pd.DataFrame({"loss": loss, "seed": seed, "set": name,
                                    "pair": np.arange(n) if name != "human" else -1, "text": texts[name],
                                    "r_star": text_set.r_star, "r_hat": rewards_of(head, text_set),
                                    "label": text_set.labels, "threshold": threshold}))
    return pd.concat(frames, ignore_index=True)


HEADLINE = {"accuracy": "human_accuracy", "accuracy_zero": "human_accuracy_zero", "f1": "human_f1",
            "f1_zero": "human_f1_zero", "auc": "human_auc", "auc_human": "human_auc_human",
            "pearson": "human_pearson", "spearman": "human_spearman", "kendall": "human_kendall",
            "pair_accuracy": "pair_accuracy", "demos_accuracy": "demos_accuracy", "demos_auc": "demos_auc",
            "demos_spearman": "demos_spearman", "epoch": "epoch"}


def summary_metrics(test: pd.DataFrame, chosen_loss: str) -> dict[str, float]:
    """irl.<loss>.test.<metric>_mean/_sd over seeds for each loss, and irl.test.* for the chosen loss.

    `accuracy`/`f1` use the threshold fitted on validation; `accuracy_zero`/`f1_zero` read sign(R-hat)
    at zero, the paper's metric. Human texts are the curated test split (prompt + original continuation).
    """
    values = {}
    for loss, rows in test.groupby("loss"):
        for name, column in HEADLINE.items():
            if column not in rows:
                continue
            column_values = rows[column].dropna().to_numpy(dtype=np.float64)
            if column_values.size == 0:
                continue
            for prefix in [f"irl.{loss}.test."] + (["irl.test."] if loss == chosen_loss else []):
                values[prefix + f"{name}_mean"] = float(column_values.mean())
                values[prefix + f"{name}_sd"] = float(column_values.std(ddof=1)) if column_values.size > 1 else 0.0
                if name == "accuracy":
                    values[prefix + "accuracy_min"] = float(column_values.min())
                    values[prefix + "accuracy_max"] = float(column_values.max())
    values["irl.seeds"] = float(test["seed"].nunique())
    return values


def seed_correlations(scores: pd.DataFrame, loss: str) -> pd.DataFrame:
    """Pairwise Spearman correlation between the seeds' rewards on the same test texts (human and demonstrations)."""
    wide = scores[scores["loss"] == loss].pivot_table(index=["set", "pair", "text"], columns="seed", values="r_hat")
    return wide.corr(method="spearman")


def best_seed(test: pd.DataFrame, loss: str) -> int:
    """The seed whose chosen epoch has the best validation pair accuracy (never a test number); ties: lowest seed."""
    rows = test[test["loss"] == loss].sort_values("seed")
    return int(rows.loc[rows[f"validation_{SELECTION_METRIC}"].idxmax(), "seed"])


# --------------------------------------------------------------------------------------------
# Notebook 04's steps


def build_demonstrations(run_dir: str | Path, curated: pd.DataFrame, irl, policy: str, r_star, seed: int,
                         device: str, dtype: str = "float32") -> pd.DataFrame:
    """Pairs on IRL-train prompts (train split), validation prompts and test prompts (notebook 03's).

    The test split's prompts were never trained on in RLHF; train and validation prompts are
    disjoint from them and from each other (the curated splits).
    """
    from irlnb.sources import load_policy

    decoding, batch_size = expert_decoding(run_dir)
    expert, tokenizer = load_policy(f"local:{expert_policy_dir(run_dir)}", device=device, dtype=dtype)
    non_expert, _ = load_policy(policy, device=device, dtype=dtype)
    frames = []
    for split, count in (("train", irl.train_pairs), ("validation", irl.validation_pairs)):
        rows = curated[curated["split"] == split]
        if count > len(rows):
            raise ValueError(f"irl.{split}_pairs is {count}, but the {split} split has {len(rows)} prompts")
        prompts = rows.sample(n=count, random_state=seed)
        frames.append(label_pairs(generate_pairs(prompts, expert, non_expert, tokenizer, decoding, batch_size, seed),
                                  split, r_star))
    test = test_demonstrations(run_dir)
    labels = curated[curated["split"] == "test"].drop_duplicates("prompt").set_index("prompt")["label"]
    test.insert(1, "label", test["prompt"].map(labels).fillna(-1).astype(int).to_numpy())
    frames.append(label_pairs(test, "test", r_star))
    return pd.concat(frames, ignore_index=True)


def feature_reader(policy: str, irl, device: str, dtype: str = "float32"):
    """The reward's form before fitting: the backbone and pooling of `irl`, with a zero head."""
    from irlnb.reward_model import FeatureReward, RewardSpec, backbone_dir, backbone_sha256
    from irlnb.sources import load_policy

    model, tokenizer = load_policy(policy, device=device, dtype=dtype)
    spec = RewardSpec(policy, backbone_sha256(backbone_dir(policy)), irl.pooling, irl.layer, irl.max_length, dtype=dtype)
    head = torch.nn.Linear(model.config.hidden_size, 1).to(device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return FeatureReward(spec, model, tokenizer, head)


def cached_features(reader, texts: list[str], cache_dir: Path, batch_size: int) -> torch.Tensor:
    """Features of `texts`, read from a cache keyed by the reward form and the texts when possible.

    The backbone is frozen, so the same texts always give the same features: refitting heads with
    other objectives (or reopening the notebook) skips the backbone entirely.
    """
    import hashlib
    from dataclasses import asdict

    key = hashlib.sha256(json.dumps([asdict(reader.spec), texts]).encode()).hexdigest()[:20]
    path = Path(cache_dir) / f"features-{key}.pt"
    if path.is_file():
        try:
            features = torch.load(path, weights_only=True)
            if features.shape == (len(texts), reader.head.in_features):
                return features
        except Exception:  # noqa: BLE001 - a cache file cut short by a kill or damaged: recompute it
            pass
    features = reader.features(texts, batch_size=batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(features, tmp)
    tmp.replace(path)
    return features


@dataclass
class FeatureSets:
    train: PairSet
    validation: tuple[TextSet, PairSet]
    test: tuple[TextSet, PairSet]
    test_texts: dict[str, list[str]]
    standardizer: Standardizer


def build_feature_sets(reader, demonstrations: pd.DataFrame, scores: pd.DataFrame, cache_dir: Path,
                       batch_size: int) -> FeatureSets:
    """Standardised features of every text the study reads, from one batched pass over the backbone."""
    blocks: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = {}
    for split in ("train", "validation", "test"):
        pairs = used_pairs(demonstrations, split)
        if len(pairs) < 2:
            raise ValueError(f"only {len(pairs)} usable {split} demonstration pairs (see irl.demos.{split}.* for exclusions)")
        expert_texts, non_expert_texts = pair_texts(pairs)
        no_labels = np.full(len(pairs), -1)
        blocks[f"{split}_expert"] = (expert_texts, pairs["expert_r_star"].to_numpy(), no_labels)
        blocks[f"{split}_non_expert"] = (non_expert_texts, pairs["non_expert_r_star"].to_numpy(), no_labels)
    for split in ("validation", "test"):
        human = scores[scores["split"] == split]
        blocks[f"{split}_human"] = (human["text"].tolist(), human["reward"].to_numpy(), human["label"].to_numpy())
    texts = [text for block in blocks.values() for text in block[0]]
    features = cached_features(reader, texts, cache_dir, batch_size)
    sets, start = {}, 0
    for name, (block_texts, r_star, labels) in blocks.items():
        sets[name] = (features[start:start + len(block_texts)], r_star, labels)
        start += len(block_texts)
    standardizer = Standardizer.fit(torch.cat([sets["train_expert"][0], sets["train_non_expert"][0]]))
    text_set = {name: TextSet(standardizer(f), r, l) for name, (f, r, l) in sets.items()}

    def pair_set(split):
        return PairSet(text_set[f"{split}_expert"], text_set[f"{split}_non_expert"])

    test_texts = {"human": blocks["test_human"][0], "expert": blocks["test_expert"][0],
                  "non_expert": blocks["test_non_expert"][0]}
    return FeatureSets(pair_set("train"), (text_set["validation_human"], pair_set("validation")),
                       (text_set["test_human"], pair_set("test")), test_texts, standardizer)


def save_learned_reward(reader, head: torch.nn.Linear, standardizer: Standardizer, folder: Path) -> Path:
    """The chosen head as a reward on raw backbone features, saved for notebook 03 and auditors."""
    from irlnb.reward_model import FeatureReward

    folded = standardizer.fold(head).to(reader.device)
    return FeatureReward(reader.spec, reader.backbone, reader.tokenizer, folded).save(folder)


def seed_agreement(correlations: pd.DataFrame) -> dict[str, float]:
    """Median and minimum Spearman correlation between two different seeds' rewards."""
    values = correlations.to_numpy()
    off_diagonal = values[~np.eye(len(values), dtype=bool)]
    if off_diagonal.size == 0:
        return {}
    return {"irl.test.seed_spearman_median": float(np.median(off_diagonal)),
            "irl.test.seed_spearman_min": float(off_diagonal.min())}


def check_saved_reward(folder: Path, scores: pd.DataFrame, device: str = "cpu", texts: int = 64) -> float:
    """Load the saved reward as an auditor would and check it scores like the study's head did.

    Returns the largest difference; the allowed one is `reward_model.score_tolerance` of the
    rewards' spread (bfloat16 features shift slightly with the batch a text is padded in).
    """
    from irlnb.reward_model import load_reward, score_tolerance

    reward = load_reward(folder, device=device)
    sample = scores.head(texts)
    gap = float(np.abs(reward.score(sample["text"].tolist()) - sample["r_hat"].to_numpy()).max())
    allowed = score_tolerance(reward.spec.dtype, float(np.std(scores["r_hat"])))
    if gap > allowed:
        raise ValueError(f"{folder}: the saved reward differs from the study's by up to {gap:.4g} (allowed {allowed:.4g})")
    return gap
