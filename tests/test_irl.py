"""Max-margin IRL: each objective on hand-made pairs, the judging metrics on hand-computed cases,
the fitting loop, the demonstrations' exclusions, feature caching and the saved reward."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import synthetic_pairs

from irlnb import metrics
from irlnb.irl import demonstrations, feature_sets, fitting, judging, references, saved_reward, study
from irlnb.irl.feature_sets import PairSet, TextSet, rewards_of
from irlnb.layout import RunLayout
from irlnb.objectives import SEEDED, objective_of
from irlnb.rewards.features import hidden_at, load_reward, random_head, reward_form

BACKBONE = "embedded:tiny-gpt-neox"


# --- judging ---------------------------------------------------------------------------------


def test_agreement_metrics_on_a_hand_computed_case():
    r_star = np.array([-2.0, -1.0, 1.0, 2.0])  # toxic, toxic, non-toxic, non-toxic
    r_hat = np.array([0.5, -1.0, 2.0, -0.5])  # at threshold 0 predicts: non-toxic, toxic, non-toxic, toxic
    values = metrics.agreement(r_hat, r_star, threshold=0.0, labels=np.array([1, 1, 0, 0]))
    assert values["accuracy"] == 0.5
    assert values["f1"] == pytest.approx(0.5)  # TP 1, FP 1, FN 1
    # toxicity score -r_hat = [-0.5, 1, -2, 0.5]; positives {-0.5, 1} beat negatives {-2, 0.5} in 3 of 4 pairs
    assert values["auc"] == 0.75 and values["auc_human"] == 0.75
    assert values["spearman"] == pytest.approx(0.0)  # ranks [3, 1, 4, 2] vs [1, 2, 3, 4]: sum d^2 = 10, 1 - 60/60
    assert values["kendall"] == pytest.approx(0.0)  # 3 concordant, 3 discordant pairs


def test_the_threshold_is_fitted_where_it_separates_best():
    r_star = np.array([-1.0, -1.0, 1.0, 1.0])
    r_hat = np.array([3.0, 4.0, 5.0, 6.0])  # perfectly ranked, but all above zero
    threshold = metrics.fit_threshold(r_hat, r_star)
    assert 4.0 <= threshold < 5.0
    assert metrics.agreement(r_hat, r_star, threshold)["accuracy"] == 1.0
    assert metrics.agreement(r_hat, r_star, 0.0)["accuracy"] == 0.5


def test_pair_accuracy_counts_ties_as_wrong():
    assert metrics.pair_accuracy(np.array([1.0, 2.0, 3.0]), np.array([0.0, 2.0, 4.0])) == pytest.approx(1 / 3)


# --- fitting ---------------------------------------------------------------------------------


def test_the_study_reports_every_loss_and_seed_and_chooses_epochs_on_validation():
    train, validation_pairs, test_pairs = synthetic_pairs(120, 0), synthetic_pairs(60, 1), synthetic_pairs(60, 2)

    def human(pairs):
        return TextSet(
            torch.cat([pairs.expert.features, pairs.non_expert.features]),
            np.concatenate([pairs.expert.r_star, pairs.non_expert.r_star]),
            -np.ones(120),
        )

    texts = {
        "human": [f"h{i}" for i in range(120)],
        "expert": [f"e{i}" for i in range(60)],
        "non_expert": [f"n{i}" for i in range(60)],
    }
    fits = [fitting.SeededFit(objective_of(loss), 1.0, 1.0, 0.05, 3, 16) for loss in ("max_margin", "logistic")]
    validation_human = human(validation_pairs)
    validation_human.repeated = validation_human.features * 2.0  # said twice: every feature doubles
    result = study.fit_irl_study(
        train,
        (validation_human, validation_pairs),
        (human(test_pairs), test_pairs),
        texts,
        fits=fits,
        seeds=3,
    )
    assert len(result.epochs) == 2 * 3 * 4 and len(result.test) == 6 and len(result.scores) == 6 * 240
    assert result.test["epoch"].between(1, 3).all()
    summary = study.summary_metrics(result.test, "max_margin")
    assert summary["irl.seeds"] == 3
    assert summary["irl.test.accuracy_mean"] == summary["irl.max_margin.test.accuracy_mean"]
    assert summary["irl.test.auc_mean"] > 0.8 and "irl.logistic.test.pair_accuracy_mean" in summary
    correlations = study.seed_correlations(result.scores, "max_margin")
    assert correlations.shape == (3, 3)
    assert 0 < study.seed_agreement(correlations)["irl.test.seed_spearman_median"] <= 1
    chosen = result.test.query("loss == 'max_margin'")
    assert (
        study.best_seed(result.test, "max_margin")
        == chosen.sort_values("seed").loc[chosen["validation_pair_accuracy"].idxmax(), "seed"]
    )
    for row in chosen.itertuples():  # the validation score carried with each test row is its chosen epoch's
        epoch = result.epochs.query("loss == 'max_margin' and seed == @row.seed and epoch == @row.epoch")
        assert row.validation_pair_accuracy == epoch["pair_accuracy"].item()
        assert row.validation_auc == epoch["human_auc"].item()  # what design choices are made on
        head = result.heads[("max_margin", row.seed)]  # what the length guard reads: R*-free, on validation
        said = (validation_human.features, validation_human.repeated)
        once, twice = (feature_sets.head_scores(head, features) for features in said)
        assert row.validation_repetition_shift == pytest.approx(metrics.repetition_shift(once, twice), rel=1e-5)
    assert (
        summary["irl.validation.auc_mean"]
        == summary["irl.max_margin.validation.auc_mean"]
        == pytest.approx(chosen["validation_auc"].mean())
    )
    assert "irl.logistic.validation.auc_sd" in summary and "irl.max_margin.validation.accuracy_mean" not in summary


# --- demonstrations ----------------------------------------------------------------------------


def test_empty_and_identical_pairs_are_counted_and_excluded():
    pairs = pd.DataFrame(
        {
            "prompt": ["a ", "b ", "c ", "d "],
            "label": [1, 0, 1, 0],
            "expert": ["nice words", "", "same", "kind"],
            "non_expert": ["rude words", "x", " same", "mean"],
        }
    )
    labelled = demonstrations.label_pairs(pairs, "train", lambda texts: np.arange(len(texts), dtype=float))
    assert labelled["excluded"].tolist() == ["", "empty continuation", "identical continuations", ""]
    counts = demonstrations.demonstration_counts(labelled)
    assert counts["irl.demos.train.used"] == 2
    assert counts["irl.demos.train.excluded_empty"] == 1 and counts["irl.demos.train.excluded_identical"] == 1
    assert demonstrations.used_pairs(labelled, "train")["prompt"].tolist() == ["a ", "d "]


def test_too_few_usable_pairs_are_refused_before_any_fitting():
    demos = pd.DataFrame(
        {
            "split": ["train"] * 2,
            "prompt": ["a", "b"],
            "expert": ["", "x"],
            "non_expert": ["y", "x"],
            "expert_r_star": [0.0, 0.0],
            "non_expert_r_star": [0.0, 0.0],
            "excluded": ["empty continuation", "identical continuations"],
        }
    )
    with pytest.raises(ValueError, match="only 0 usable train demonstration pairs"):
        feature_sets.build_feature_sets(None, demos, pd.DataFrame(), None, 8)


# --- features and the saved reward ---------------------------------------------------------------


def test_reading_a_middle_layer_stops_early_and_equals_the_full_pass():
    from irlnb.models.policies import load_policy

    model, tokenizer = load_policy(BACKBONE)
    batch = tokenizer(["You are such an idiot", "What a day"], return_tensors="pt", padding=True)
    with torch.inference_mode():
        full = model(**batch, output_hidden_states=True).hidden_states
        assert torch.allclose(hidden_at(model, batch, 1), full[1], atol=1e-6)
        assert torch.allclose(hidden_at(model, batch, -1), model.base_model(**batch).last_hidden_state)
    with pytest.raises(ValueError, match="layer 5 does not exist: the backbone has blocks 1..2"):
        hidden_at(model, batch, 5)


def test_features_are_cached_and_a_damaged_cache_is_recomputed(tmp_path):
    reader = reward_form(BACKBONE, "mean", 1, 32)
    texts = ["You are such an idiot", "What a lovely day"]
    first = feature_sets.cached_features(reader, texts, tmp_path, batch_size=2)
    (cache_file,) = tmp_path.glob("features-*.pt")
    reader.features = lambda *args, **kwargs: pytest.fail("the cache was not used")
    assert torch.equal(feature_sets.cached_features(reader, texts, tmp_path, batch_size=2), first)
    cache_file.write_bytes(b"cut short")
    del reader.features  # back to the real method
    assert torch.allclose(feature_sets.cached_features(reader, texts, tmp_path, batch_size=2), first)


def test_the_saved_reward_folds_the_standardisation_and_scores_like_the_study(tmp_path):
    reader = reward_form(BACKBONE, "mean", 2, 32)
    texts = ["You are such an idiot", "What a lovely day", "ok then"]
    raw = reader.features(texts)
    standardizer = feature_sets.Standardizer.fit(raw)
    head = random_head(raw.shape[1], seed=0)
    expected = rewards_of(head, TextSet(standardizer(raw), np.zeros(3), -np.ones(3)))
    saved_reward.save_learned_reward(reader, head, standardizer, tmp_path / "reward")
    np.testing.assert_allclose(load_reward(tmp_path / "reward").score(texts), expected, atol=1e-4)


# --- notebook 04 in the smoke pipeline ------------------------------------------------------------


def test_notebook_04_writes_the_metrics_files_and_a_loadable_reward(smoke_run):
    import json

    metrics = json.loads((smoke_run / "metrics.json").read_text())
    for key in (
        "accuracy_mean",
        "f1_mean",
        "auc_mean",
        "auc_human_mean",
        "spearman_mean",
        "pair_accuracy_mean",
        "starc_distance_mean",
    ):
        assert np.isfinite(metrics[f"irl.test.{key}"]), key
        for loss in SEEDED:  # compare_losses is on in smoke.yaml
            assert f"irl.{loss}.test.{key}" in metrics
    assert metrics["irl.seeds"] == 3
    for loss in SEEDED:  # fitted over the seeds: a spread
        assert metrics[f"irl.{loss}.fits"] == 3 and np.isfinite(metrics[f"irl.{loss}.test.accuracy_sd"])
    # the saved reward is the posterior mean (smoke.yaml keeps the default loss): one fit, no spread
    assert metrics["irl.fits"] == metrics["irl.laplace.fits"] == 1 and "irl.test.accuracy_sd" not in metrics
    out = smoke_run / "irl"
    demos = pd.read_parquet(out / "demonstrations.parquet")
    assert set(demos["split"]) == {"train", "validation", "test"}
    assert {"prompt", "expert", "non_expert", "expert_r_star", "non_expert_r_star", "excluded"} <= set(demos)
    assert metrics["irl.demos.train.used"] == (demos.query("split == 'train'")["excluded"] == "").sum()
    epochs = pd.read_csv(out / "epochs.csv")
    assert len(epochs) == len(SEEDED) * 3 * (3 + 1)  # losses x seeds x (epochs + the initial head)
    for method in ("mean_shift", "supervised", "log_ratio", "log_ratio_whole"):  # mean shift, ceiling, white box
        assert np.isfinite(metrics[f"irl.{method}.test.auc_mean"]), method
        assert 0 <= metrics[f"irl.{method}.test.starc_distance_mean"] <= 2, method
        assert metrics[f"irl.{method}.fits"] == 1 and f"irl.{method}.test.auc_sd" not in metrics, method
    assert "irl.r_star_comparisons.fits" not in metrics  # smoke.yaml draws one sample per prompt: no such row
    # the audit report, in the stage an audit may stop after (--until 04_irl): extremes, words, reward against length
    extremes = pd.read_csv(out / "audit_extremes.csv")
    assert set(extremes["end"]) == {"highest", "lowest"} and extremes["r_hat"].is_monotonic_decreasing
    assert list(pd.read_csv(out / "audit_words.csv").columns) == ["word", "effect", "texts"]
    assert (smoke_run / "figures" / "reward_against_length.png").is_file()
    assert not (smoke_run / "analysis" / "audit_extremes.csv").exists()  # no longer notebook 05's
    assert np.isfinite(metrics["irl.test.accuracy_label_free_mean"]) and "irl.demos.train.sign_differs" in metrics
    import irlnb

    reward = irlnb.load_reward(out / "reward")  # the auditor's entry point
    chosen = pd.read_csv(out / "layer_choice.csv").iloc[0]  # stage 04 chose what it reads (smoke.yaml leaves it)
    assert (reward.spec.layer, reward.spec.pooling) == (chosen["layer"], chosen["pooling"])
    assert np.isfinite(reward.score(["You are an idiot", "Have a nice day"])).all()


def test_a_reward_read_in_bfloat16_is_loaded_in_bfloat16(tmp_path):
    reader = reward_form(BACKBONE, "last", -1, 32, dtype="bfloat16")
    texts = ["You are such an idiot", "What a lovely day"]
    raw = reader.features(texts)
    assert raw.dtype == torch.float32  # features leave the backbone as float32 whatever its dtype
    saved_reward.save_learned_reward(
        reader, random_head(raw.shape[1], 0), feature_sets.Standardizer.fit(raw), tmp_path / "reward"
    )
    loaded = load_reward(tmp_path / "reward")
    assert loaded.spec.dtype == "bfloat16" and next(loaded.backbone.parameters()).dtype == torch.bfloat16


def test_a_saved_reward_that_does_not_score_like_the_study_is_caught(smoke_run):
    import json

    saved_seed = int(json.loads((smoke_run / "metrics.json").read_text())["irl.saved_seed"])
    saved_loss = study.saved_objective_of(RunLayout(smoke_run))
    scores = pd.read_parquet(smoke_run / "irl" / "test_scores.parquet")
    chosen = (scores["loss"] == saved_loss) & (scores["seed"] == saved_seed) & (scores["set"] == "human")
    saved = scores[chosen].reset_index(drop=True)
    assert saved_reward.check_saved_reward(smoke_run / "irl" / "reward", saved) < 1e-3  # float32: the same scores
    wrong = saved.assign(r_hat=saved["r_hat"].to_numpy()[::-1])  # the scores of other texts
    with pytest.raises(ValueError, match="the saved reward differs from the study's"):
        saved_reward.check_saved_reward(smoke_run / "irl" / "reward", wrong)


# --- failure-aware IRL, the floor and the ceiling, the label-free threshold ----------------------


def test_the_floor_and_the_ceiling_on_a_planted_direction():
    train, validation = synthetic_pairs(300, 0), synthetic_pairs(150, 1)
    floor = fitting.mean_shift_head(train).weight.detach().flatten()
    assert floor[0] == floor.abs().max() and float(floor.norm()) == pytest.approx(1.0)  # the shift is the direction
    ceiling, c = references.supervised_head(train, validation)
    weight = ceiling.weight.detach().flatten()
    assert weight[0] == weight.abs().max() and c in references.SUPERVISED_C
    test = synthetic_pairs(150, 2)
    texts = torch.cat([test.expert.features, test.non_expert.features])
    r_star = np.concatenate([test.expert.r_star, test.non_expert.r_star])
    with torch.no_grad():
        assert metrics.roc_auc(r_star <= 0, -ceiling(texts).squeeze(-1).numpy()) > 0.95  # it reads R*


def test_the_ceiling_is_refused_when_the_texts_are_all_of_one_sign():
    train = synthetic_pairs(20, 0)
    one_sided = PairSet(
        TextSet(train.expert.features, np.ones(20), -np.ones(20)),
        TextSet(train.non_expert.features, np.ones(20), -np.ones(20)),
    )
    with pytest.raises(ValueError, match="the train demonstration texts are all non-toxic by R\\*"):
        references.supervised_head(one_sided, train)


def test_demonstration_evidence_on_a_hand_case():
    demos = pd.DataFrame(
        {
            "split": "train",
            "excluded": ["", "", "", "identical continuations"],
            "expert_r_star": [2.0, 1.0, -1.0, 5.0],
            "non_expert_r_star": [-1.0, 2.0, -3.0, 5.0],
            "expert": ["a b c", "a b c", "d e", "x y"],
            "non_expert": ["a b", "c d", "e f", "x y"],
        }
    )
    values = references.demonstration_evidence(demos)
    # distinct-2 pooled over a side's used continuations: expert bigrams ab, bc, ab, bc, de -> 3 of 5
    assert values["irl.demos.train.expert_distinct_2"] == pytest.approx(3 / 5)
    assert values["irl.demos.train.non_expert_distinct_2"] == pytest.approx(1.0)
    assert values["irl.demos.train.sign_differs"] == 1  # only the first usable pair crosses zero
    assert values["irl.demos.train.expert_better_share"] == pytest.approx(2 / 3)
    assert values["irl.demos.train.r_star_gap_mean"] == pytest.approx((3 - 1 + 2) / 3)
    assert values["irl.demos.train.both_non_toxic_share"] == pytest.approx(1 / 3)


def test_the_label_free_threshold_separates_expert_from_non_expert_texts():
    assert 2.0 <= judging.label_free_threshold(np.array([3.0, 4.0]), np.array([1.0, 2.0])) < 3.0


def test_without_r_star_the_threshold_is_the_label_free_one_and_only_r_star_free_metrics_are_judged():
    r_expert, r_non_expert = np.array([3.0, 4.0]), np.array([1.0, 2.0])
    r_human = np.array([0.5, 1.5, 3.5])
    absent = TextSet(torch.zeros(3, 0), np.full(3, np.nan), np.array([1, 0, 0]))
    measured = TextSet(torch.zeros(3, 0), np.array([-1.0, 1.0, 1.0]), np.array([1, 0, 0]))
    assert 2.0 <= judging.validation_threshold(r_human, absent, r_expert, r_non_expert) < 3.0
    assert judging.validation_threshold(r_human, measured, r_expert, r_non_expert) == pytest.approx(1.0)
    sides = [TextSet(torch.zeros(2, 0), np.full(2, np.nan), -np.ones(2)) for _ in range(2)]
    values = judging.judge_rewards(r_human, r_expert, r_non_expert, absent, PairSet(*sides, np.array([0, 1])), 2.5)
    assert values == {"pair_accuracy": 1.0, "pair_log_likelihood": pytest.approx(values["pair_log_likelihood"])}
    assert values["pair_log_likelihood"] > np.log(0.5)
    measured_sides = [TextSet(torch.zeros(2, 0), np.array(r), -np.ones(2)) for r in ([1.0, 2.0], [1.0, -1.0])]
    judged = judging.judge_rewards(r_human, r_expert, r_non_expert, measured, PairSet(*measured_sides, None), 1.0)
    assert judged["human_accuracy"] == pytest.approx(1.0)  # R* measured: judged against it
    assert judged["demos_accuracy"] == pytest.approx(0.5)  # R-hat 3, 4, 1, 2 cut at 1 vs sign(R*) 1, 2, 1, -1


# --- the white-box log-ratio reward --------------------------------------------------------------


def test_the_log_ratio_reward_is_the_difference_of_the_two_models_log_likelihoods(tmp_path):
    from irlnb.models.policies import load_policy
    from irlnb.rewards.likelihood import LogRatioReward

    expert, tokenizer = load_policy(BACKBONE)
    with torch.no_grad():  # an 'aligned' copy: the base with its output layer nudged
        for parameter in expert.get_output_embeddings().parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    expert.save_pretrained(tmp_path / "expert")
    tokenizer.save_pretrained(tmp_path / "expert")
    reward = LogRatioReward.from_sources(f"local:{tmp_path / 'expert'}", BACKBONE)
    base, _ = load_policy(BACKBONE)
    prompt, continuation = "You are such a", " kind person"
    ids = tokenizer(prompt + continuation, return_tensors="pt")["input_ids"]
    n_prompt = len(tokenizer(prompt)["input_ids"])

    def log_likelihood(model, first):  # sum of log p(token t | before) for t >= first
        with torch.no_grad():
            log_probs = torch.log_softmax(model(ids).logits[0, :-1], dim=-1)
        return float(log_probs[torch.arange(first - 1, ids.shape[1] - 1), ids[0, first:]].sum())

    expected = log_likelihood(reward.expert, n_prompt) - log_likelihood(base, n_prompt)
    assert reward.score_pairs([prompt], [continuation])[0] == pytest.approx(expected, abs=1e-4)
    whole = log_likelihood(reward.expert, 1) - log_likelihood(base, 1)
    assert reward.score([prompt + continuation])[0] == pytest.approx(whole, abs=1e-4)
    same = LogRatioReward.from_sources(BACKBONE, BACKBONE)
    assert np.allclose(same.score(["You are such an idiot", "What a day"]), 0.0)

    reward.save(tmp_path / "white_box")
    np.testing.assert_allclose(
        load_reward(tmp_path / "white_box").score_pairs([prompt], [continuation]), [expected], atol=1e-4
    )  # load_reward reads it like any reward


def test_log_probs_normalised_one_sequence_at_a_time_are_those_of_the_whole_batch_bit_for_bit_and_carry_gradients():
    from irlnb.rewards.likelihood import picked_log_probs

    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(5, 7, 301, generator=generator) * 4).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 301, (5, 7), generator=generator)
    whole = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    picked = picked_log_probs(logits, targets)
    assert picked.dtype == torch.float32 and torch.equal(picked, whole)
    (gradient,) = torch.autograd.grad(picked.sum(), logits)
    (expected,) = torch.autograd.grad(whole.sum(), logits)
    assert torch.equal(gradient, expected) and gradient.abs().sum() > 0


def test_the_base_side_of_the_log_ratio_is_read_once_and_kept(tmp_path):
    from irlnb.models.policies import load_policy
    from irlnb.rewards.likelihood import LogRatioReward

    expert, tokenizer = load_policy(BACKBONE)
    with torch.no_grad():
        for parameter in expert.get_output_embeddings().parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    expert.save_pretrained(tmp_path / "expert")
    tokenizer.save_pretrained(tmp_path / "expert")
    reward = LogRatioReward.from_sources(f"local:{tmp_path / 'expert'}", BACKBONE)
    prompts, continuations = ["You are such a", "What a"], [" kind person", " day it was, honestly"]
    fresh = reward.gaps(prompts, continuations, batch_size=2)
    kept = reward.gaps(prompts, continuations, batch_size=2, cache_dir=tmp_path / "cache")
    np.testing.assert_allclose(kept, fresh, atol=1e-9)
    (cache_file,) = (tmp_path / "cache").glob("base-log-likelihoods-*.pt")

    read = []
    real = reward.log_likelihoods
    reward.log_likelihoods = lambda model, *args: read.append(model) or real(model, *args)
    again = reward.gaps(prompts, continuations, batch_size=2, cache_dir=tmp_path / "cache")
    assert read == [reward.expert]  # the base's side came from the cache, the expert's was read
    np.testing.assert_array_equal(again, kept)
    reward.gaps(prompts[:1], continuations[:1], batch_size=2, cache_dir=tmp_path / "cache")
    assert read[1:] == [reward.base, reward.expert]  # other texts: the base is read
    cache_file.write_bytes(b"cut short")
    read.clear()
    np.testing.assert_allclose(reward.gaps(prompts, continuations, 2, tmp_path / "cache"), fresh, atol=1e-9)
    assert read == [reward.base, reward.expert]  # a damaged cache file is recomputed


def test_a_log_ratio_over_models_with_other_tokenizers_is_refused():
    from irlnb.rewards.likelihood import LogRatioReward, TokenizerMismatch

    with pytest.raises(TokenizerMismatch, match="have different tokenizers"):
        LogRatioReward.from_sources("embedded:smollm2-135m-instruct", BACKBONE)


# --- the posterior over the reward -----------------------------------------------------------------


def test_the_laplace_posterior_recovers_a_planted_direction_and_contracts_with_more_pairs():
    from irlnb.irl import posterior

    validation = synthetic_pairs(100, 1)
    few = posterior.laplace_posterior(synthetic_pairs(25, 0), prior_std=1.0)
    many = posterior.laplace_posterior(synthetic_pairs(400, 0), prior_std=1.0)
    for fit in (few, many):
        assert int(fit.mean.abs().argmax()) == 0 and float(fit.mean[0]) > 0  # the planted direction, its sign
    probe = torch.randn(50, 8, generator=torch.Generator().manual_seed(5))
    assert many.std(probe).mean() < 0.5 * few.std(probe).mean()  # more evidence, a surer reward
    assert many.pair_log_likelihood(validation) > few.pair_log_likelihood(validation)
    far = 10 * probe  # texts far from what the pairs varied along
    assert (many.std(far) > many.std(probe)).all()
    chosen = posterior.fit_posterior(synthetic_pairs(200, 0), validation)
    assert chosen.prior_std in posterior.PRIOR_STDS
    rows = posterior.contraction(synthetic_pairs(200, 0), validation, validation.expert, counts=(25, 100))
    assert [row["pairs"] for row in rows] == [25, 100, 200]
    assert rows[-1]["std_mean"] < rows[0]["std_mean"]


def test_the_uncertainty_metrics_rank_wrong_signs_by_spread_by_other_side_probability_and_by_nearness():
    from irlnb.irl import posterior
    from irlnb.irl.feature_sets import TextSet

    # A 2-feature posterior: R-hat = x0, std = |x1| (covariance diag(0, 1)). Threshold 0; R* > 0 is non-toxic.
    covariance = torch.diag(torch.tensor([0.0, 1.0], dtype=torch.float64))
    fit = posterior.Posterior(torch.tensor([1.0, 0.0], dtype=torch.float64), covariance, 1.0)
    features = torch.tensor([[3.0, 1.0], [-3.0, 1.0], [0.5, 2.0], [-0.5, 0.5], [2.0, 4.0]])
    r_star = np.array([1.0, -1.0, -1.0, 1.0, 1.0])  # the 3rd and 4th are on the wrong side of R-hat's threshold
    values = posterior.uncertainty_metrics(fit, TextSet(features, r_star, -np.ones(5)), 0.0, features)
    assert values["wrong_share"] == pytest.approx(0.4)
    # std 1, 1, 2, 0.5, 4: the wrong texts' stds (2, 0.5) are above the right ones' in 2 of the 6 pairs
    assert values["std_auc_wrong"] == pytest.approx(2 / 6)
    # |mean| / std = 3, 3, 0.25, 1, 0.5: the wrong ones are nearest in posterior sds but for 1 vs 0.5
    assert values["other_side_probability_auc_wrong"] == pytest.approx(5 / 6)
    # |mean| = 3, 3, 0.5, 0.5, 2: the wrong ones are the nearest (no spread in it)
    assert values["nearness_auc_wrong"] == pytest.approx(1.0)


def test_a_saved_posterior_reward_returns_its_spread(tmp_path):
    from irlnb.irl import posterior

    reader = reward_form(BACKBONE, "mean", 1, 32)
    texts = ["You are such an idiot", "What a lovely day", "ok then", "Thanks a lot"]
    raw = reader.features(texts)
    standardizer = feature_sets.Standardizer.fit(raw)
    standard = standardizer(raw)
    pairs = PairSet(TextSet(standard[:2], np.zeros(2), -np.ones(2)), TextSet(standard[2:], np.zeros(2), -np.ones(2)))
    fit = posterior.laplace_posterior(pairs, prior_std=0.5)
    saved_reward.save_learned_reward(reader, fit.head(), standardizer, tmp_path / "reward", fit.covariance)
    mean, std = load_reward(tmp_path / "reward").score(texts, return_std=True)
    np.testing.assert_allclose(mean, (standard.double() @ fit.mean).numpy(), atol=1e-4)
    np.testing.assert_allclose(std, fit.std(standard), rtol=1e-3)  # the folded covariance gives the same spread
    saved_reward.save_learned_reward(reader, fit.head(), standardizer, tmp_path / "plain")
    with pytest.raises(Exception, match="this reward has no posterior over its head"):
        load_reward(tmp_path / "plain").score(texts, return_std=True)


# --- one-fit reporting, the STARC distance, R*'s own comparisons ---------------------------------


def test_a_loss_fitted_once_reports_its_mean_and_its_fit_count_but_no_spread():
    test = pd.DataFrame(
        {
            "loss": ["max_margin", "max_margin", "mean_shift"],
            "seed": [0, 1, 0],
            "human_accuracy": [0.6, 0.8, 0.5],
            "human_auc": [0.7, 0.9, 0.6],
            "starc_distance": [0.4, 0.6, 1.1],
            "repetition_shift": [-0.2, -0.4, -0.1],
            "validation_auc": [0.7, 0.8, 0.6],
        }
    )
    summary = study.summary_metrics(test, "mean_shift")
    assert summary["irl.max_margin.test.repetition_shift_mean"] == pytest.approx(-0.3)
    assert summary["irl.max_margin.fits"] == 2 and summary["irl.mean_shift.fits"] == 1 and summary["irl.fits"] == 1
    assert summary["irl.max_margin.test.accuracy_sd"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert summary["irl.max_margin.test.accuracy_min"] == 0.6 and summary["irl.max_margin.test.accuracy_max"] == 0.8
    assert summary["irl.max_margin.test.starc_distance_mean"] == pytest.approx(0.5)
    assert summary["irl.mean_shift.test.accuracy_mean"] == 0.5 and summary["irl.test.auc_mean"] == 0.6
    assert summary["irl.mean_shift.test.starc_distance_mean"] == pytest.approx(1.1)
    one_fit = [key for key in summary if key.startswith(("irl.mean_shift.", "irl.test.", "irl.validation."))]
    assert one_fit and not [key for key in one_fit if key.endswith(("_sd", "_min", "_max"))]


def test_the_study_judges_fixed_heads_by_their_starc_distance_on_the_test_pairs():
    def with_prompts(pairs):  # two pairs per prompt
        return PairSet(pairs.expert, pairs.non_expert, np.arange(len(pairs.expert.r_star)) // 2)

    validation_pairs, test_pairs = with_prompts(synthetic_pairs(40, 1)), with_prompts(synthetic_pairs(40, 2))

    def human(pairs):
        return TextSet(pairs.expert.features, pairs.expert.r_star, -np.ones(40))

    texts = {"human": ["h"] * 40, "expert": ["e"] * 40, "non_expert": ["n"] * 40}
    direction = np.eye(8)[0]  # R* of the synthetic pairs is feature 0
    result = study.fit_irl_study(
        synthetic_pairs(40, 0),
        (human(validation_pairs), validation_pairs),
        (human(test_pairs), test_pairs),
        texts,
        fits=[],
        seeds=0,
        fixed_heads={
            "truth": fitting.head_of(3 * direction, bias=1.0),
            "opposite": fitting.head_of(-direction),
            "other": fitting.head_of(np.eye(8)[1]),
        },
    )
    summary = study.summary_metrics(result.test, "truth")
    assert summary["irl.truth.test.starc_distance_mean"] == pytest.approx(0.0, abs=1e-6)  # R* up to scale and shift
    assert summary["irl.opposite.test.starc_distance_mean"] == pytest.approx(2.0)
    assert 1.0 < summary["irl.other.test.starc_distance_mean"] < 1.8  # unrelated: near sqrt(2)
    assert summary["irl.other.fits"] == 1 and "irl.other.test.starc_distance_sd" not in summary
    # without prompts (synthetic pairs) the distance is not judged rather than judged on wrong groups
    plain = judging.judge_rewards(
        np.zeros(40), np.ones(40), np.zeros(40), human(test_pairs), synthetic_pairs(40, 2), threshold=0.0
    )
    assert "starc_distance" not in plain


def test_prompt_ids_group_the_pairs_drawn_on_one_prompt():
    pairs = pd.DataFrame({"prompt": ["x ", "y ", "x ", "z "]})
    assert feature_sets.prompt_ids(pairs).tolist() == [0, 1, 0, 2]


def _base_samples():
    """Used pairs of one split (row order = the non-expert texts' features), with base samples per prompt."""
    return pd.DataFrame(
        {
            "prompt": ["a", "a", "a", "b", "b", "c", "c", "d", "e", "e"],
            "sample": [0, 1, 2, 0, 1, 0, 1, 0, 1, 0],
            "non_expert": ["a0", "a1", "a2", "b0", "b1", "same", " same", "d0", "e1", "e0"],
            "non_expert_r_star": [1.0, 2.0, 9.0, 0.5, 0.5, -1.0, 1.0, 3.0, -1.0, 0.5],
        }
    )


def test_r_star_orders_the_first_two_base_samples_of_each_prompt():
    pairs = _base_samples()
    base = TextSet(torch.arange(10.0).view(10, 1), pairs["non_expert_r_star"].to_numpy(), -np.ones(10))
    comparisons = feature_sets.base_comparison_pairs(pairs, base)
    # a: samples 0 and 1 (sample 2 unused), R* 1 < 2 -> row 1 preferred over row 0; b: equal R* (dropped);
    # c: the same continuation (dropped); d: one sample (skipped); e: sample 0 (row 9, R* .5) over sample 1 (row 8)
    assert comparisons.expert.features.flatten().tolist() == [1.0, 9.0]
    assert comparisons.non_expert.features.flatten().tolist() == [0.0, 8.0]
    assert comparisons.expert.r_star.tolist() == [2.0, 0.5] and comparisons.non_expert.r_star.tolist() == [1.0, -1.0]
    assert comparisons.prompt_ids.tolist() == [0, 4]  # prompts a and e
    one_sample = pairs[pairs["sample"] == 0].reset_index(drop=True)
    assert feature_sets.base_comparison_pairs(one_sample, base) is None  # greedy or one sample per prompt


def test_r_star_comparisons_are_a_reference_head_fitted_on_the_base_comparisons_only():
    train, validation = synthetic_pairs(200, 0), synthetic_pairs(100, 1)
    swap = [1, 0, *range(2, 8)]  # the comparisons' R* direction is feature 1, the demonstrations' feature 0
    comparisons = tuple(
        PairSet(
            TextSet(p.expert.features[:, swap], p.expert.r_star, p.expert.labels),
            TextSet(p.non_expert.features[:, swap], p.non_expert.r_star, p.non_expert.labels),
        )
        for p in (synthetic_pairs(200, 3), synthetic_pairs(100, 4))
    )
    heads = references.reference_heads(train, validation, comparisons)
    assert list(heads) == ["supervised", "r_star_comparisons"]
    weight = heads["r_star_comparisons"].weight.detach().flatten()
    assert weight[1] == weight.abs().max() and float(heads["r_star_comparisons"].bias.detach()) == 0.0
    assert list(references.reference_heads(train, validation)) == ["supervised"]  # one sample per prompt: no row


def test_the_feature_sets_carry_prompts_and_the_base_comparisons_from_the_cached_features(tmp_path):
    rows = []
    for split, prompts in (("train", ["p1 ", "p2 "]), ("validation", ["v1 ", "v2 "]), ("test", ["t1 ", "t2 "])):
        for prompt in prompts:
            for sample in (0, 1):
                rows.append(
                    {
                        "split": split,
                        "prompt": prompt,
                        "sample": sample,
                        "expert": f"kind {sample}",
                        "non_expert": f"rude {sample}",
                        "expert_r_star": 1.0,
                        "non_expert_r_star": float(sample),  # sample 1 is preferred by R*
                        "excluded": "",
                    }
                )
    scores = pd.DataFrame(
        {"split": ["validation", "test"], "text": ["a human", "another"], "reward": [1.0, -1.0], "label": [0, 1]}
    )
    reader = reward_form(BACKBONE, "mean", 1, 32)
    sets = feature_sets.build_feature_sets(reader, pd.DataFrame(rows), scores, tmp_path, batch_size=4)
    assert sets.train.prompt_ids.tolist() == [0, 0, 1, 1] and sets.test[1].prompt_ids.tolist() == [0, 0, 1, 1]
    train_comparisons, validation_comparisons = sets.base_comparisons
    assert torch.equal(train_comparisons.expert.features, sets.train.non_expert.features[[1, 3]])
    assert torch.equal(train_comparisons.non_expert.features, sets.train.non_expert.features[[0, 2]])
    assert len(validation_comparisons.expert.r_star) == 2
    greedy = pd.DataFrame(rows).query("sample == 0")
    assert feature_sets.build_feature_sets(reader, greedy, scores, tmp_path, batch_size=4).base_comparisons is None
