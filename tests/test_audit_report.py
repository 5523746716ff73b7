"""What an auditor reads of a recovered reward without R* (`irlnb.report.audit`): its extreme held-out texts and the
words that move it, computed from the saved reward's scores alone."""

import numpy as np
import pandas as pd
import pytest

from irlnb.report import audit


def scores() -> pd.DataFrame:
    texts = ["thanks so much", "thanks friend", "you idiot", "idiot and fool", "plain words here", "more plain words"]
    r_hat = [2.0, 1.0, -2.0, -3.0, 0.0, 0.5]
    human = pd.DataFrame({"loss": "laplace", "seed": 0, "set": "human", "text": texts, "r_hat": r_hat, "r_star": 0.0})
    other = human.assign(seed=1, r_hat=-human["r_hat"])  # another seed: never read for seed 0
    demos = human.assign(set="expert")
    return pd.concat([human, other, demos], ignore_index=True)


def test_the_extremes_are_the_saved_rewards_highest_and_lowest_held_out_texts():
    human = audit.saved_human_scores(scores(), "laplace", 0)
    assert len(human) == 6
    table = audit.extremes(human, 2)
    assert table["text"].tolist() == ["thanks so much", "thanks friend", "you idiot", "idiot and fool"]
    assert table["end"].tolist() == ["highest"] * 2 + ["lowest"] * 2
    assert table["percentile"].tolist() == pytest.approx([1.0, 5 / 6, 2 / 6, 1 / 6])
    with pytest.raises(ValueError, match="no human test scores for loss 'logistic', seed 0"):
        audit.saved_human_scores(scores(), "logistic", 0)


def test_extremes_far_from_the_demonstrations_are_called_out_by_the_posterior_spread():
    human = audit.saved_human_scores(scores(), "laplace", 0)
    spread = [1.0, 2.0, 3.0, 4.0, 5.0, 60.0]  # the last text ("more plain words") lies far out
    posterior = pd.DataFrame({"set": "human", "text": human["text"], "posterior_std": spread})
    table = audit.extremes(audit.with_spread(human, pd.concat([posterior, posterior.assign(set="expert")])), 3)
    assert table["posterior_std"].tolist() == [1.0, 2.0, 60.0, 5.0, 3.0, 4.0]  # R-hat 2, 1, 0.5 | 0, -2, -3
    assert table["spread_percentile"].tolist() == pytest.approx([1 / 6, 2 / 6, 1.0, 5 / 6, 3 / 6, 4 / 6])
    assert audit.far_extremes(table).startswith("Caution: 1 of the 3 highest-scored texts lie among the 5% of ")
    assert audit.far_extremes(table[table["posterior_std"] < 10]) == ""  # nothing far out
    assert audit.far_extremes(audit.extremes(human, 3)) == ""  # no posterior: nothing to say


def test_a_words_effect_is_the_mean_reward_with_it_minus_without_it_in_units_of_the_spread():
    human = audit.saved_human_scores(scores(), "laplace", 0)
    table = audit.word_effects(human, min_texts=2, count=5).set_index("word")
    r_hat = human["r_hat"].to_numpy()
    spread = np.std(r_hat)
    assert table.loc["thanks", "effect"] == pytest.approx((1.5 - np.mean([-2.0, -3.0, 0.0, 0.5])) / spread)
    assert table.loc["idiot", "effect"] == pytest.approx((-2.5 - np.mean([2.0, 1.0, 0.0, 0.5])) / spread)
    assert table.loc["thanks", "texts"] == 2 and "you" not in table.index  # held by one text: below min_texts
    assert table["effect"].is_monotonic_decreasing
    assert audit.word_effects(human, min_texts=2, count=1)["word"].tolist() == ["thanks", "idiot"]


def test_the_caution_says_when_length_explains_the_reward_or_repetition_moves_it():
    quiet = {
        "irl.test.length_tokens_spearman_mean": -0.07,
        "irl.test.newline_share_spearman_mean": 0.01,
        "irl.test.punctuation_share_spearman_mean": 0.05,
        "irl.test.spearman_mean": 0.6,
        "irl.test.repetition_shift_mean": -0.05,
    }
    assert audit.caution(quiet).startswith("No simple text statistic tracks the recovered reward")
    long = {**quiet, "irl.test.length_tokens_spearman_mean": -0.78, "irl.test.spearman_mean": 0.11}
    assert "tracks the texts' length tokens (Spearman -0.78" in audit.caution(long)
    repeated = {**quiet, "irl.test.repetition_shift_mean": -0.5}
    assert "said twice over 0.50 of its spread less than the text said once" in audit.caution(repeated)
    without_r_star = {k: v for k, v in long.items() if k != "irl.test.spearman_mean"}
    assert "Caution" in audit.caution(without_r_star) and "R*" not in audit.caution(without_r_star)


def test_the_length_figure_shows_the_rewards_spearman_with_length_in_words():
    human = pd.DataFrame({"text": ["a", "a b", "a b c d", "a b c d e f g h"], "r_hat": [4.0, 3.0, 1.0, -2.0]})
    figure = audit.length_figure(human)
    assert figure.axes[0].get_title() == "The saved reward against length: Spearman -1.00"
    assert len(figure.axes[0].collections[0].get_offsets()) == 4
