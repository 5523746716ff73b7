"""A reward explorer: type a text, see R*, the learned reward and the evaluator side by side (without R*, an audit
of a brought expert: the learned reward and the evaluator).

It is for a person in JupyterLab auditing what the learned reward rewards. Under papermill it
stays inert: building the widget reads only saved files (the disagreement list), and the models are
loaded the first time a text is scored, which happens only on a button click.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from irlnb.compute import resolve_device
from irlnb.irl.demonstrations import load_demonstrations, pair_texts, used_pairs
from irlnb.layout import RunLayout
from irlnb.metric_names import IRL_SAVED_SEED, optional
from irlnb.models.classifiers import load_classifier
from irlnb.progress import quiet
from irlnb.report.tables import r_star_judged
from irlnb.rewards.features import load_reward
from irlnb.rewards.ground_truth import GroundTruthReward

DEMONSTRATION_SETS = ("expert", "non_expert")


class RewardExplorer:
    """Scores texts with R*, the run's learned reward and the independent evaluator; models load on first use."""

    def __init__(self, layout: RunLayout, sources, ground_truth, device: str = "cpu", loss: str | None = None):
        self.layout, self.sources, self.ground_truth = layout, sources, ground_truth
        self.device, self.loss = device, loss
        self._models: dict[str, object] = {}
        self.last_scores: pd.DataFrame | None = None  # what the widget's button scored last

    @property
    def loaded(self) -> tuple[str, ...]:
        """Which models have been loaded so far (none until something is scored)."""
        return tuple(self._models)

    def _model(self, name: str):
        if name not in self._models:
            device = resolve_device(self.device)
            if name == "classifier":
                self._models[name] = GroundTruthReward.load(self.sources, self.ground_truth, device)
            elif name == "evaluator":
                self._models[name] = load_classifier(self.sources.evaluator, role="evaluator", device=device)
            elif name == "posterior":
                self._models[name] = load_reward(self.layout.posterior_reward, device=device)
            else:
                self._models[name] = load_reward(self.layout.learned_reward, device=device)
        return self._models[name]

    @property
    def has_r_star(self) -> bool:
        """Whether the run has an R* to show (not an audit without one: `irlnb.rewards.ground_truth.NO_R_STAR`)."""
        return r_star_judged(self.sources, self.layout.read_metrics())

    @property
    def has_posterior(self) -> bool:
        return (self.layout.posterior_reward / "reward.json").is_file()

    def score(self, texts: list[str]) -> pd.DataFrame:
        """One row per text: R* (> 0: non-toxic), the learned reward (higher: more expert-like), and, when the run
        has one, the posterior's mean and spread (large far from the demonstrations; it does not say which scores are
        wrong: README, the posterior), then the evaluator's p_toxic."""
        texts = [str(text) for text in texts]
        if not texts:
            columns = ["text", "r_star", "learned_reward", "evaluator_p_toxic"]
            return pd.DataFrame(columns=[column for column in columns if column != "r_star" or self.has_r_star])
        if any(not text.strip() for text in texts):
            raise ValueError("an empty text cannot be scored; give each text some words")
        table = pd.DataFrame({"text": texts})
        if self.has_r_star:
            table["r_star"] = self._model("classifier")(texts)
        table["learned_reward"] = self._model("learned").score(texts)
        if self.has_posterior:
            table["posterior_mean"], table["posterior_std"] = self._model("posterior").score(texts, return_std=True)
        table["evaluator_p_toxic"] = self._model("evaluator").p_toxic(texts)
        return table

    def disagreements(self, n: int, seed: int | None = None, by: str = "rank_gap") -> pd.DataFrame:
        """The n test demonstration texts whose rank under the learned reward is furthest from their rank under R*
        (`by="rank_gap"`), or, with `by="uncertainty"`, those with the widest posterior spread (texts unlike the
        demonstrations; the spread does not flag R-hat's wrong signs). Without R* only the second is defined.

        Read from irl/test_scores.parquet (no model is loaded): ranks are percentiles among the
        test demonstration texts, so the learned reward's arbitrary shift and scale do not matter.
        `loss` (given at construction) picks the objective; `seed` picks one IRL repeat. When it is
        None, the repeat saved as irl/reward (metrics key irl.saved_seed) is used, or, without that
        key, each text's learned-reward rank is averaged over the repeats. Without test_scores.parquet the test
        demonstrations are scored with the saved reward instead (this loads it).
        """
        if by == "rank_gap" and not self.has_r_star:
            raise ValueError(
                "no R* in this run (an audit without one): no rank gap to sort by; sort by 'uncertainty', or read "
                f"what the recovered reward ranks highest and lowest in {self.layout.audit_extremes}"
            )
        path = self.layout.irl_test_scores
        if path.is_file():
            scores = pd.read_parquet(path)
            scores = scores[scores["set"].isin(DEMONSTRATION_SETS)]
            losses = sorted(scores["loss"].unique())
            loss = self.loss or (losses[0] if len(losses) == 1 else None)
            if loss not in losses:
                raise ValueError(
                    f"{path}: holds losses {', '.join(losses)}; choose one (RewardExplorer(loss=...)), "
                    f"got {self.loss!r}"
                )
            scores = scores[scores["loss"] == loss]
            if seed is None:  # the repeat notebook 04 saved as irl/reward, when it says which
                # Optional: without the key, each text's rank is averaged over the repeats (see above).
                saved = optional(self.layout.read_metrics(), IRL_SAVED_SEED, default=None)
                seed = int(saved) if saved is not None and int(saved) in set(scores["seed"]) else None
            if seed is not None:
                if seed not in set(scores["seed"]):
                    raise ValueError(f"{path}: no seed {seed} for loss {loss}; seeds: {sorted(set(scores['seed']))}")
                scores = scores[scores["seed"] == seed]
            scores = scores.assign(rank_learned=scores.groupby("seed")["r_hat"].rank(pct=True))
            texts = scores.groupby(["set", "pair", "text"], as_index=False).agg(
                r_star=("r_star", "first"), learned_reward=("r_hat", "mean"), rank_learned=("rank_learned", "mean")
            )
        else:
            texts = self._score_test_demonstrations()
            texts["rank_learned"] = texts["learned_reward"].rank(pct=True)
        if texts.empty:
            raise ValueError(f"{self.layout.demonstrations}: no test demonstration texts to compare")
        texts["rank_r_star"] = texts["r_star"].rank(pct=True)
        texts["rank_gap"] = texts["rank_learned"] - texts["rank_r_star"]
        columns = ["text", "set", "pair", "r_star", "learned_reward", "rank_r_star", "rank_learned", "rank_gap"]
        if not self.has_r_star:
            columns = [column for column in columns if column not in ("r_star", "rank_r_star", "rank_gap")]
        if self.layout.posterior_scores.is_file():
            spread = pd.read_parquet(self.layout.posterior_scores)[["set", "pair", "text", "posterior_std"]]
            texts = texts.merge(spread, on=["set", "pair", "text"], how="left")
            columns.append("posterior_std")
        if by == "uncertainty":
            if "posterior_std" not in texts:
                raise ValueError(
                    f"{self.layout.posterior_scores}: missing; the run fitted no posterior (irl.posterior)"
                )
            key = texts["posterior_std"]
        elif by == "rank_gap":
            key = texts["rank_gap"].abs()
        else:
            raise ValueError(f"sort disagreements by 'rank_gap' or 'uncertainty', not {by!r}")
        order = key.sort_values(ascending=False, kind="stable").index
        return texts.loc[order].head(n).reset_index(drop=True)[columns]

    def _score_test_demonstrations(self) -> pd.DataFrame:
        demos = used_pairs(load_demonstrations(self.layout), "test")
        frames = []
        for name, texts in zip(DEMONSTRATION_SETS, pair_texts(demos)):
            frames.append(
                pd.DataFrame(
                    {
                        "set": name,
                        "pair": np.arange(len(demos)),
                        "text": texts,
                        "r_star": demos[f"{name}_r_star"].to_numpy(float),
                        "learned_reward": self._model("learned").score(texts) if texts else [],
                    }
                )
            )
        return pd.concat(frames, ignore_index=True)

    def widget(self, examples: list[str] | None = None, n: int = 20):
        """A text box, a score button, a pick list of disagreement texts, and an output area.

        Building it loads no model: the pick list comes from irl/test_scores.parquet when it exists
        (`examples` overrides it), and scoring runs only when the button is clicked.
        """
        # The widget toolkit loads only where a widget is drawn (never under papermill or in the tests' imports).
        import ipywidgets as widgets

        def listed(by: str) -> list[str]:
            if by == "extremes":
                path = self.layout.audit_extremes
                return pd.read_csv(path)["text"].tolist() if path.is_file() else []
            return self.disagreements(n, by=by)["text"].tolist() if self.layout.irl_test_scores.is_file() else []

        first = "rank_gap" if self.has_r_star else "extremes"  # without R*, nothing to disagree with
        if examples is None:
            examples = listed(first)
        text = widgets.Textarea(
            placeholder="one text per line (a text picked from the list is scored whole)",
            layout=widgets.Layout(width="100%", height="6em"),
            continuous_update=False,  # the text is sent when the box loses focus: before the button's click
        )
        headings = {
            "rank_gap": "(texts where the learned reward and R* disagree most)",
            "extremes": "(held-out texts the learned reward ranks highest and lowest: the audit report)",
            "uncertainty": "(texts with the widest posterior spread: far from the demonstrations, not necessarily "
            "wrong)",
        }

        def options(by: str, texts: list[str]) -> list[tuple[str, str]]:
            return [(headings[by], "")] + [(example[:120], example) for example in texts]

        picks = widgets.Dropdown(options=options(first, examples), layout=widgets.Layout(width="100%"))
        first_option = (
            ("rank gap", "rank_gap", "ranked by how far the learned reward's rank is from R*'s")
            if self.has_r_star
            else ("highest and lowest", "extremes", "the held-out texts the learned reward ranks highest and lowest")
        )
        order = widgets.ToggleButtons(
            options=[first_option[:2], ("uncertainty", "uncertainty")],
            value=first,
            disabled=not self.layout.posterior_scores.is_file(),
            tooltips=[first_option[2], "ranked by the posterior's spread"],
        )

        def on_order(change) -> None:
            picks.options = options(change["new"], listed(change["new"]))

        button = widgets.Button(description="score", button_style="primary")
        output = widgets.Output()

        def on_pick(change) -> None:
            if change["new"]:
                text.value = change["new"]

        def on_click(_) -> None:
            # Written to the output widget's list directly (not `with output:`), so the area always shows the
            # last answer only, in JupyterLab or not.
            output.outputs = ()
            texts = texts_to_score(text.value, picks.value)
            if not texts:
                output.append_stdout("Nothing to score: type a text (one per line) or pick one from the list.\n")
                return
            if len(self.loaded) < 2 + self.has_r_star + self.has_posterior:
                models = "R*, the learned reward" if self.has_r_star else "The learned reward"
                output.append_stdout(f"Loading {models} and the evaluator (the first time only) ...\n")
            try:
                with quiet():
                    self.last_scores = self.score(texts)
            except Exception as err:  # noqa: BLE001 - shown to the person at the keyboard, not raised into the UI loop
                output.outputs = ()
                output.append_stdout(f"{type(err).__name__}: {err}\n")
                return
            output.outputs = ()  # the loading line goes; the scores stay
            output.append_display_data(self.last_scores)

        picks.observe(on_pick, names="value")
        order.observe(on_order, names="value")
        button.on_click(on_click)
        return widgets.VBox([order, picks, text, button, output])


def texts_to_score(typed: str, picked: str) -> list[str]:
    """The texts the widget scores: the picked text as one text (it may hold line breaks), else one per typed line."""
    if picked and typed == picked:
        return [picked]
    return [line for line in typed.splitlines() if line.strip()]
