"""`irlnb compare`: two runs' saved rewards judged on the same held-out texts, with paired intervals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.stats import spearmanr

from irlnb import metric_names as names
from irlnb.irl import comparison
from irlnb.layout import RunLayout
from irlnb.metrics import roc_auc, toxic_by_reward
from irlnb.pipeline import compare
from irlnb.rewards.features import load_reward, random_reward
from irlnb.rewards.ground_truth import load_scores
from tests.conftest import irlnb_cli

key = names.compare_metric


@pytest.fixture()
def other_reward_run(smoke_run, tmp_path):
    """The smoke run with its saved reward replaced by a seeded random one on the same backbone."""
    other = tmp_path / "other"
    shutil.copytree(smoke_run, other, symlinks=True)
    shutil.rmtree(other / "irl" / "reward")
    backbone = load_reward(smoke_run / "irl" / "reward").spec.backbone
    random_reward(backbone, seed=3, pooling="mean", layer=1).save(other / "irl" / "reward")
    return other


def test_two_saved_rewards_are_judged_on_the_same_texts_with_paired_intervals(smoke_run, other_reward_run, tmp_path):
    result = compare.compare(smoke_run, other_reward_run, record=tmp_path / "compare.json")
    values = result["metrics"]
    human = load_scores(RunLayout(smoke_run)).query("split == 'test'")
    texts, r_star = human["text"].tolist(), human["reward"].to_numpy()
    first, second = (load_reward(run / "irl" / "reward").score(texts) for run in (smoke_run, other_reward_run))
    auc = [roc_auc(toxic_by_reward(r_star), -scores) for scores in (first, second)]
    assert values[key("auc_first")] == pytest.approx(auc[0]) and values[key("auc_second")] == pytest.approx(auc[1])
    assert values[key("auc_difference")] == pytest.approx(auc[0] - auc[1])
    assert values[key("spearman_first")] == pytest.approx(spearmanr(first, r_star).statistic)
    for measure in compare.MEASURES:  # the smoke run draws the test prompts' continuations: every measure
        low, high = values[key(f"{measure}_difference_ci_low")], values[key(f"{measure}_difference_ci_high")]
        assert low <= values[key(f"{measure}_difference")] <= high and low < high
    assert all(names.parse(name) == "compare" for name in values)
    assert values[key("texts")] == len(texts)
    saved = json.loads((tmp_path / "compare.json").read_text())
    assert saved["metrics"] == values and saved["first"]["04_irl_commit"] and saved["git"]["commit"]
    table = compare.comparison_table(values)
    assert table["measure"].tolist() == list(compare.MEASURES)

    itself = comparison.compare_runs(smoke_run, smoke_run)  # a reward against itself: no difference, no spread
    for measure in compare.MEASURES:
        assert itself[key(f"{measure}_difference")] == 0
        assert itself[key(f"{measure}_difference_ci_low")] == itself[key(f"{measure}_difference_ci_high")] == 0
    assert np.isfinite(itself[key("within_prompt_spearman_first")])


def test_a_run_without_a_saved_reward_is_refused_in_one_line(smoke_run, tmp_path):
    done = irlnb_cli("compare", str(smoke_run), str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"irlnb: error: {tmp_path}: no saved reward (irl/reward); run its stage 04_irl first"
    ]


def test_rewards_judged_by_different_r_star_are_refused(smoke_run, other_reward_run):
    layout = RunLayout(other_reward_run)
    scores = load_scores(layout)
    layout.ground_truth_scores.unlink()  # a copy of the file, not the smoke run's
    scores.assign(reward=-scores["reward"]).to_parquet(layout.ground_truth_scores, index=False)
    with pytest.raises(comparison.ComparisonError, match="judge by different R\\*"):
        comparison.compare_runs(smoke_run, other_reward_run)
