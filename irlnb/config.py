"""The settings of every run: one typed section per step, each declared once, as a field of `Config`.

Each setting is a typed field with a one-line description (units included), a range or a set of
choices where it has one, and its default. **The defaults are the embedded default run**: a params
file lists only what it changes (and says why), so every default is written once, here.
`irlnb check --describe` prints them all. Reading, validating, overriding and describing a params
file is `irlnb.params_file`'s job.

A section is a frozen dataclass of `setting()` fields; `SECTIONS` (the params file's order) is read
from `Config`'s fields. A section may define
- `problems()`: the rules within itself, as (key, message) pairs, checked when it is parsed;
- `cross_problems(config)`: the rules that read other sections, as ('section.key', message) pairs,
  defined on the section that owns the rule and checked once every section is parsed;
- `resolved()`: itself with 'auto' made concrete for this machine, once it is valid.

A setting marked `result=False` (a device, a thread count, a checkpoint interval, the batch size of
an exact computation) never changes a result: stage digests leave it out, so changing it never
makes a finished stage look stale.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from irlnb.errors import IrlnbError
from irlnb.objectives import AUTO, LOSS_CHOICES, objective_of
from irlnb.sources import SourceError, parse_source

# irl.layer 0: notebook 04 chooses the layer from the demonstrations (`irlnb.irl.layer_choice.reward_reader`)
AUTO_LAYER = 0


class ConfigError(IrlnbError, ValueError):
    """A params file (or a notebook's parameters) that cannot be used; the message is one line."""


def setting(
    default: Any = dataclasses.MISSING,
    *,
    doc: str,
    ge: float | None = None,
    le: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
    choices: tuple | None = None,
    result: bool = True,
) -> Any:
    """A config field with its description, the bounds it is validated against, and whether it can change a result."""
    meta = {"doc": doc, "ge": ge, "le": le, "gt": gt, "lt": lt, "choices": choices, "result": result}
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------
# Sections


@dataclass(frozen=True)
class RunSettings:
    """Where the run lives and what it publishes; read by the runner, not by the notebooks."""

    name: str = setting(doc="run directory name under runs_dir (letters, digits, - and _)")
    runs_dir: str = setting("runs", doc="directory holding run directories, relative to the repo root")
    figures_dir: str = setting(
        "",
        doc="directory the run's figures are published to when every stage is complete with the params file as "
        "written (a partial run, or one changed by --set, publishes nothing; empty: none)",
    )

    def problems(self) -> list[tuple[str, str]]:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.name):
            return [("name", f"expected letters, digits, '-' and '_' only, got {self.name!r}")]
        return []


@dataclass(frozen=True)
class ComputeSettings:
    """How every stage computes."""

    seed: int = setting(0, doc="seed of every random choice (splits, initialisation, sampling)", ge=0)
    torch_threads: int = setting(
        2, doc="torch intra-op CPU threads (1 is faster when the machine is busy)", ge=1, le=512, result=False
    )
    device: str = setting(
        "cpu",
        doc="torch device for models ('auto': CUDA when there is one)",
        choices=("cpu", "cuda", "auto"),
        result=False,
    )
    inference_dtype: str = setting(
        "auto",
        doc="dtype of models that only infer (evaluation, demonstrations, IRL features; 'auto': bfloat16 where the "
        "device computes it natively, a CPU with AVX512-BF16 or AMX or a GPU, else float32)",
        choices=("auto", "float32", "bfloat16"),
    )
    training_dtype: str = setting(
        "auto",
        doc="dtype of the dpo and infonca training steps: bfloat16 autocast over float32 weights where the device "
        "computes it natively (as inference_dtype's 'auto'), else float32; rloo, grpo and rft train in float32",
        choices=("auto", "float32", "bfloat16"),
    )
    training_layers: str = setting(
        "auto",
        doc="how the decoder layers of the infonca training step run: 'compiled' by torch.compile (inductor; the "
        "same model, its sums rounded in another order) or 'eager' ('auto': compiled on a CPU where a C++ compiler "
        "is found, else eager; compiling is untried on a GPU)",
        choices=("auto", "compiled", "eager"),
    )

    def resolved(self) -> ComputeSettings:
        """'auto' made concrete for this machine, so that stage keys and manifests record what ran."""
        from irlnb.compute import resolve_dtype, resolve_layers  # torch: only when a compute section is parsed

        return dataclasses.replace(
            self,
            inference_dtype=resolve_dtype(self.inference_dtype, self.device),
            training_dtype=resolve_dtype(self.training_dtype, self.device),
            training_layers=resolve_layers(self.training_layers, self.device),
        )


@dataclass(frozen=True)
class SourcesSettings:
    """Models and data: 'embedded:NAME' (from PyPI, offline), 'local:PATH' or 'hub:ORG/NAME'."""

    policy: str = setting("embedded:smollm2-135m-instruct", doc="base policy (causal LM) to be aligned and audited")
    toxicity_classifier: str = setting(
        "embedded:tox-block",
        doc="ground-truth classifier behind R* (toxicity; embedded:vader-sentiment and embedded:flesch-readability "
        "score other properties, for the recovery suite; empty: no R*, an audit of a brought sources.expert whose "
        "every judgement against R* is skipped)",
    )
    evaluator: str = setting(
        "embedded:profanity-check", doc="independent toxicity evaluator (a second opinion, never trained against)"
    )
    prompts: str = setting("embedded:insults", doc="comments with human toxicity labels that prompts are cut from")
    expert: str = setting(
        "",
        doc="an aligned model to audit, with sources.policy as its base (a save_pretrained folder, local:PATH or "
        "hub:ORG/NAME): stage 03 takes it instead of aligning the policy with R* itself (empty: align here)",
    )

    def problems(self) -> list[tuple[str, str]]:
        for key, spec in dataclasses.asdict(self).items():
            if key in ("expert", "toxicity_classifier") and not spec:
                continue  # no model brought: stage 03 aligns the policy itself; no R*: an audit (cross_problems)
            try:
                # A params file's relative paths were made absolute against its folder when it was read
                # (irlnb.params_file.load_config); what is still relative (a notebook's parameters cell) is the cwd's.
                parse_source(spec, role=key, base_dir=Path.cwd())
            except SourceError as err:
                return [(key, str(err))]
        return []

    def cross_problems(self, config: Config) -> list[tuple[str, str]]:
        """Without R* there is nothing to align an expert with: only a brought one can be audited."""
        if self.toxicity_classifier or self.expert:
            return []
        return [
            (
                "sources.toxicity_classifier",
                "empty means no R*, so stage 03 has nothing to align the expert with: bring the aligned model "
                "with sources.expert, or name a classifier",
            )
        ]


@dataclass(frozen=True)
class CurateSettings:
    """Notebook 01: which comments become prompts, and how they are split."""

    n_per_class: int = setting(1000, doc="comments kept per human label (toxic, non-toxic); the data is balanced", ge=2)
    min_words: int = setting(8, doc="shortest comment kept, in whitespace-separated words", ge=2)
    max_words: int = setting(60, doc="longest comment kept, in words", ge=2)
    prompt_fraction: float = setting(0.5, doc="share of a comment's words that form the prompt", gt=0.0, lt=1.0)
    min_prompt_words: int = setting(4, doc="fewest words in a prompt", ge=1)
    min_continuation_words: int = setting(2, doc="fewest words left for the original continuation", ge=1)
    validation_fraction: float = setting(0.2, doc="share of comments in the validation split", gt=0.0, lt=0.5)
    test_fraction: float = setting(0.2, doc="share of comments in the test split", gt=0.0, lt=0.5)
    text_column: str = setting("comment_text", doc="text column of a hub/local data set (the embedded data ignores it)")
    label_column: str = setting("toxic", doc="0/1 human toxicity label column of a hub/local data set")

    def train_per_label(self) -> int:
        """Train-split comments of each label (irlnb.data.curation.assign_splits rounds the same way)."""
        n = self.n_per_class
        return n - round(self.validation_fraction * n) - round(self.test_fraction * n)

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if self.max_words < self.min_words:
            found.append(("max_words", f"expected >= curate.min_words ({self.min_words}), got {self.max_words}"))
        if self.min_prompt_words + self.min_continuation_words > self.min_words:
            found.append(
                (
                    "min_words",
                    "expected >= min_prompt_words + min_continuation_words "
                    f"({self.min_prompt_words + self.min_continuation_words}), got {self.min_words}",
                )
            )
        return found


@dataclass(frozen=True)
class GroundTruthSettings:
    """Notebook 02: the ground-truth reward R*(x) = -logit p_toxic(x)."""

    reward_clip: float = setting(10.0, doc="|R*| is clamped to this (nats of log-odds)", gt=0.0)
    batch_size: int = setting(
        128, doc="texts per batch when the ground-truth classifier scores them", ge=1, result=False
    )


# The kinds of alignment notebook 03 knows; each has a settings section of its name (below), and a record in
# irlnb.rl.kinds (how it trains, loads and is labelled).
ALIGNMENT_KINDS = ("dpo", "infonca", "rloo", "grpo", "rft", "best_of_n")


def _aligns_the_expert(config: Config, kind: str) -> bool:
    """Whether stage 03 aligns the expert itself (no sources.expert brought) with `kind`: only then do the
    rules of that kind's section on other sections apply."""
    return config.rlhf.trainer == kind and not config.sources.expert


@dataclass(frozen=True)
class RlhfSettings:
    """Notebook 03: what every kind of alignment shares; each kind's own settings are in its section."""

    trainer: str = setting(
        "dpo",
        doc="the kind of alignment, whose settings are in the section of that name: dpo: direct preference "
        "optimisation on reward-ordered pairs of base samples (the default: a model trained on the reward, "
        "README); infonca: the KL optimum fitted on several scored base samples per prompt; rloo / grpo: "
        "KL-regularised RL with TRL; rft: rejection-sampling fine-tuning; best_of_n: no training, the best of n "
        "samples under the reward",
        choices=ALIGNMENT_KINDS,
    )
    seed: int = setting(
        0, doc="seed of the alignment alone (samples, data order) on top of compute.seed; studies vary it", ge=0
    )
    max_completion_length: int = setting(24, doc="longest sampled completion, in tokens", ge=1)
    top_k: int = setting(30, doc="top-k of sampled completions (0: none; the paper used 30)", ge=0)
    temperature: float = setting(1.0, doc="temperature of sampled completions", gt=0.0)
    train_prompts: str = setting(
        "toxic", doc="train-split prompts trained on, by human label", choices=("toxic", "all")
    )
    reward_batch_size: int = setting(32, doc="texts per batch when a backbone reward scores completions", ge=1)


@dataclass(frozen=True)
class DpoSettings:
    """rlhf.trainer dpo: TRL's DPOTrainer on pairs of base samples ordered by the reward (its fixed point is
    pi_base * exp(reward / beta) / Z); the settings carry the names of TRL's DPOConfig where TRL has one."""

    prompts: int = setting(
        400,
        doc="train-split prompts (of rlhf.train_prompts' pool) its preference pairs are drawn on; IRL's "
        "demonstrations never use them",
        ge=1,
    )
    n: int = setting(2, doc="base samples per prompt; the reward's best and worst form the pair", ge=2)
    beta: float = setting(0.1, doc="KL coefficient of DPO (the implicit reward is beta * log pi / pi_base)", gt=0.0)
    learning_rate: float = setting(
        1e-3, doc="AdamW learning rate (with LoRA; chosen on held-out preference pairs, README)", gt=0.0
    )
    num_train_epochs: int = setting(1, doc="passes over the preference pairs", ge=1)
    per_device_train_batch_size: int = setting(8, doc="preference pairs per optimiser step", ge=1)
    lora_rank: int = setting(
        16, doc="LoRA rank on all linear layers (0: full fine-tuning; LoRA trained faster and further, README)", ge=0
    )
    save_steps: int = setting(20, doc="steps between resumable checkpoints", ge=1, result=False)

    def cross_problems(self, config: Config) -> list[tuple[str, str]]:
        return _held_out_prompt_problems(config, "dpo", self.prompts)


@dataclass(frozen=True)
class InfoncaSettings:
    """rlhf.trainer infonca: InfoNCA (arXiv 2402.05369) on `n` scored base samples per prompt: within a prompt, the
    policy's softmax over log pi / pi_base of the samples is fitted to softmax(reward / beta), whose minimum is the
    KL-regularised optimum pi_base * exp(reward / beta) / Z itself (the reward scaled to unit sd on human texts)."""

    prompts: int = setting(
        400,
        doc="train-split prompts (of rlhf.train_prompts' pool) its samples are drawn on; IRL's demonstrations never "
        "use them",
        ge=1,
    )
    n: int = setting(4, doc="base samples per prompt, each scored by the reward (K of InfoNCA)", ge=2)
    beta: float = setting(
        0.1,
        doc="KL coefficient: the target is softmax(reward / beta) over a prompt's samples (chosen with the learning "
        "rate by irlnb tune-expert on validation, README)",
        gt=0.0,
    )
    learning_rate: float = setting(6e-4, doc="AdamW learning rate (with LoRA; chosen on validation, README)", gt=0.0)
    num_train_epochs: int = setting(1, doc="passes over the prompts", ge=1)
    per_device_train_batch_size: int = setting(4, doc="prompts per optimiser step (each with its n samples)", ge=1)
    lora_rank: int = setting(16, doc="LoRA rank on all linear layers (0: full fine-tuning)", ge=0)
    save_steps: int = setting(20, doc="steps between resumable checkpoints", ge=1, result=False)

    def cross_problems(self, config: Config) -> list[tuple[str, str]]:
        return _held_out_prompt_problems(config, "infonca", self.prompts)


def _held_out_prompt_problems(config: Config, kind: str, prompts: int) -> list[tuple[str, str]]:
    """A kind that trains on a sample of `prompts` train prompts: they must fit its pool, and leave IRL's train
    prompts room (IRL never sees them)."""
    if not _aligns_the_expert(config, kind):
        return []
    per_label = config.curate.train_per_label()
    pool = per_label * (1 if config.rlhf.train_prompts == "toxic" else 2)
    irl = config.irl
    if prompts > pool:
        return [
            (
                f"{kind}.prompts",
                f"expected at most {pool} (the train prompts of rlhf.train_prompts' pool), got {prompts}",
            )
        ]
    # balanced: half of each label, and the expert's prompts may all be of one label (all of them, from "toxic")
    irl_pool, room = {
        "toxic": (per_label, per_label - prompts),
        "all": (2 * per_label, 2 * per_label - prompts),
        "balanced": (2 * per_label, 2 * (per_label - prompts)),
    }[irl.prompt_pool]
    if irl.train_prompts > room:
        return [
            (
                "irl.train_prompts",
                f"expected at most {room}: IRL's {irl_pool} train prompts of pool "
                f"'{irl.prompt_pool}' less the {prompts} that {kind}.prompts trains the expert on "
                f"(IRL never sees them), got {irl.train_prompts}",
            )
        ]
    return []


@dataclass(frozen=True)
class PolicyGradientSettings:
    """KL-regularised RL with TRL; the settings carry the names of TRL's config (RLOOConfig, GRPOConfig)."""

    max_steps: int = setting(40, doc="optimiser steps", ge=1)
    learning_rate: float = setting(5e-5, doc="AdamW learning rate (chosen on validation, README)", gt=0.0)
    beta: float = setting(0.05, doc="KL coefficient against the starting policy (0: no KL term)", ge=0.0)
    per_device_train_batch_size: int = setting(
        8, doc="completions per optimiser step (a multiple of num_generations)", ge=2
    )
    num_generations: int = setting(4, doc="completions per prompt (the leave-one-out or group baseline)", ge=2)
    lora_rank: int = setting(0, doc="LoRA rank on all linear layers (0: full fine-tuning)", ge=0)
    save_steps: int = setting(10, doc="steps between resumable checkpoints", ge=1, result=False)

    def problems(self) -> list[tuple[str, str]]:
        if self.per_device_train_batch_size % self.num_generations:
            return [
                (
                    "per_device_train_batch_size",
                    f"expected a multiple of num_generations ({self.num_generations}), "
                    f"got {self.per_device_train_batch_size}",
                )
            ]
        return []


@dataclass(frozen=True)
class RlooSettings(PolicyGradientSettings):
    """rlhf.trainer rloo: REINFORCE with a leave-one-out baseline and a KL penalty (TRL's RLOOTrainer)."""


@dataclass(frozen=True)
class GrpoSettings(PolicyGradientSettings):
    """rlhf.trainer grpo: group-relative policy optimisation (TRL's GRPOTrainer), with the same KL coefficient."""


@dataclass(frozen=True)
class RftSettings:
    """rlhf.trainer rft: rounds of best-of-n sampling, then fine-tuning on the winners (a perplexity guard)."""

    rounds: int = setting(1, doc="rounds of best-of-n sampling then fine-tuning on the winners", ge=1)
    n: int = setting(2, doc="candidates sampled per prompt, of which the reward keeps one", ge=1)
    num_train_epochs: int = setting(1, doc="fine-tuning passes over a round's winners", ge=1)
    learning_rate: float = setting(
        1e-5, doc="AdamW learning rate of the fine-tuning on the winners (5e-5 raised perplexity x1.35)", gt=0.0
    )
    per_device_train_batch_size: int = setting(8, doc="(prompt, winner) pairs per fine-tuning step", ge=1)
    top_k: int = setting(
        0,
        doc="top-k of the candidates (0: the policy's own distribution, so fine-tuning on the winners tilts it "
        "toward the reward instead of sharpening it)",
        ge=0,
    )
    max_perplexity_ratio: float = setting(
        1.15, doc="an epoch that raises held-out human text's perplexity past this ratio is undone", gt=1.0
    )


@dataclass(frozen=True)
class BestOfNSettings:
    """rlhf.trainer best_of_n: no training; the best of n samples of the base model under the reward."""

    n: int = setting(2, doc="candidates sampled per prompt, of which the reward keeps one", ge=1)

    def cross_problems(self, config: Config) -> list[tuple[str, str]]:
        """An expert without a model of its own cannot share the base's random numbers (IRL would see the
        candidate it rejected, R*'s own comparison)."""
        if not _aligns_the_expert(config, "best_of_n"):
            return []
        if config.irl.matched and config.irl.decoding == "sampled":
            return [
                (
                    "irl.matched",
                    "a best-of-n expert has no model of its own, so its samples cannot share random numbers with "
                    "the base's (its base side would be the candidate it rejected); set irl.matched: false",
                )
            ]
        return []


@dataclass(frozen=True)
class RandomRewardSettings:
    """Notebook 03's control: a fixed, seeded random linear reward on the policy's own features, read in
    `compute.inference_dtype`."""

    seed: int = setting(1234, doc="seed of the random head", ge=0)
    pooling: str = setting(
        "last", doc="hidden states it reads: last real token or token mean", choices=("last", "mean")
    )
    layer: int = setting(-1, doc="hidden-state layer it reads (-1: the final, normed one)")


@dataclass(frozen=True)
class EvaluationSettings:
    """How policies are evaluated on held-out test prompts (notebook 03) and how intervals are drawn (02, 03, 05)."""

    prompts: int = setting(400, doc="test prompts each policy is evaluated on (at most the test split)", ge=1)
    max_new_tokens: int = setting(24, doc="tokens generated per evaluation continuation", ge=1)
    batch_size: int = setting(
        64, doc="prompts per generation batch (chosen by `irlnb bench`; bfloat16 results depend on the padding)", ge=1
    )
    sampled: bool = setting(False, doc="also evaluate sampled continuations (rlhf.top_k, rlhf.temperature)")
    perplexity_texts: int = setting(100, doc="held-out human non-toxic texts for the perplexity (fluency) check", ge=1)
    bootstrap_samples: int = setting(1000, doc="bootstrap resamples for 95% intervals of the metrics", ge=100)


@dataclass(frozen=True)
class IrlSettings:
    """Notebook 04: IRL of a reward from the expert's (aligned with R*) and the base policy's continuations."""

    train_prompts: int = setting(
        800,
        doc="train-split prompts the fitted demonstrations are drawn on; never the prompts an expert that holds out "
        "its train prompts (dpo, infonca) was trained on",
        ge=2,
    )
    validation_prompts: int = setting(200, doc="validation-split prompts (epoch and threshold choice)", ge=2)
    test_prompts: int = setting(
        0, doc="test-split prompts the test pairs are drawn on (0: every test prompt; studies draw fewer)", ge=0
    )
    prompt_pool: str = setting(
        "all",
        doc="labels of the train and validation prompts drawn (the test pairs use every test prompt): all, toxic "
        "only, or balanced: each label's share that of the test split (half and half), whatever prompts the expert "
        "was trained on took from one label",
        choices=("all", "toxic", "balanced"),
    )
    decoding: str = setting(
        "sampled",
        doc="how expert and base continue a prompt: greedy, or sampled (rlhf.top_k, rlhf.temperature); "
        "a best-of-n expert always samples",
        choices=("greedy", "sampled"),
    )
    samples_per_prompt: int = setting(
        2,
        doc="demonstration pairs per prompt (sampled decoding; greedy gives one); more of them order a prompt's "
        "continuations better, where more prompts did little (README: 'Four times the samples per prompt'); each "
        "adds to stage 04's sampling and reading",
        ge=1,
    )
    test_samples_per_prompt: int = setting(
        2,
        doc="demonstration pairs per test prompt, at most samples_per_prompt: test pairs are only judged (the "
        "auditor's test pair accuracy), never fitted, so more samples per prompt for the fit need not draw and read "
        "more of them",
        ge=1,
    )
    matched: bool = setting(
        True,
        doc="sampled decoding: both sides of a pair draw with the same seed (common random numbers, which an auditor "
        "holding both models can draw), so a pair differs by what the expert changed, not by sampling noise; a "
        "best-of-n expert has no model of its own and is sampled independently (matched: false)",
    )
    draw: int = setting(
        0,
        doc="which draw of the demonstrations: the same prompts, their continuations sampled with other random numbers "
        "(`irlnb replicates --draws`: the spread between draws, from which regress tolerances are also set; 0: the "
        "default draw); the test prompts' within-prompt samples stay those of draw 0",
        ge=0,
    )
    max_new_tokens: int = setting(24, doc="tokens per demonstration continuation", ge=1)
    within_prompt_samples: int = setting(
        4,
        doc="base samples drawn on every test prompt beside its human continuation, to judge how a reward orders one "
        "prompt's continuations against R* (where IRL can identify a reward; 0: not judged)",
        ge=0,
    )
    pooling: str = setting(
        AUTO,
        doc="hidden states feeding the head: last real token (the paper), token mean, or 'auto': chosen by notebook "
        "04 with the layer, by validation pair log-likelihood of expert over base, without R*",
        choices=("last", "mean", AUTO),
    )
    layer: int = setting(
        AUTO_LAYER,
        doc="hidden-state layer read by the head (0: chosen by notebook 04 among a sweep of the depth, by validation "
        "pair log-likelihood of expert over base, without R*: irl/layer_choice.csv; -1: final, normed; the paper's)",
    )
    length_probes: int = setting(
        300,
        doc="IRL-train pairs whose texts are also read said twice over: the directions their features move along then "
        "(length, not content) are removed from what every head reads, so a reward cannot learn that the aligned "
        "model's shorter or longer texts are better (0: nothing removed; irlnb.irl.repetition)",
        ge=0,
    )
    max_repetition_shift: float = setting(
        0.1,
        doc="the fewest such directions are removed for which the Laplace head pays at most this for a validation "
        "human text said twice (units of its spread; reads the texts' words, never their R*); with irl.loss auto, the "
        "saved objective is the best that pays at most this too (none: the one that pays least)",
        gt=0.0,
    )
    loss: str = setting(
        "auto",
        doc="objective of the reward that is saved and studied over seeds ('auto': of those fitted, the best "
        "validation pair log-likelihood of expert over base, chosen without R*)",
        choices=LOSS_CHOICES,
    )
    compare_losses: bool = setting(True, doc="also fit the other objectives over the same seeds and report them")
    posterior: bool = setting(
        True,
        doc="also fit the Laplace posterior over the head (laplace): its mean is judged like the others, "
        "its spread against errors and out-of-domain texts, saved as irl/posterior_reward",
    )
    white_box: bool = setting(
        True, doc="also judge the white-box reward log pi_expert - log pi_base (needs the expert's weights)"
    )
    margin: float = setting(1.0, doc="hinge margin of max_margin (reward units; features are standardised)", gt=0.0)
    max_head_norm: float = setting(
        0.3, doc="L2 bound on the head weights of max_margin (projected after each step)", gt=0.0
    )
    failure_focus: float = setting(
        4.0, doc="failure_aware: extra weight of a misranked or nearly tied pair at the last epoch (ramped up)", ge=0.0
    )
    failure_near: float = setting(
        0.5, doc="failure_aware: an advantage R(expert) - R(non-expert) below this is a failure (reward units)"
    )
    learning_rate: float = setting(1e-3, doc="Adam learning rate of the head", gt=0.0)
    epochs: int = setting(30, doc="passes over the IRL-train pairs", ge=1)
    batch_size: int = setting(32, doc="demonstration pairs per optimiser step", ge=1)
    seeds: int = setting(10, doc="repeats with other head initialisation and data order (non-identifiability)", ge=1)
    inference_batch_size: int = setting(
        64,
        doc="prompts per batch when generating demonstrations (each with its samples: 128 sequences decoded together, "
        "chosen by `irlnb bench`) and texts per forward pass when reading features",
        ge=1,
    )
    max_length: int = setting(128, doc="longest text the reward reads, in tokens (longer ones keep their start)", ge=2)
    audit_texts: int = setting(
        10,
        doc="the audit report: held-out human texts the saved reward ranks highest, and as many lowest, and words "
        "that move it most",
        ge=1,
    )
    audit_word_texts: int = setting(
        10,
        doc="the audit report: a word is listed among those that move the saved reward when at least this many "
        "held-out texts hold it",
        ge=1,
    )

    def problems(self) -> list[tuple[str, str]]:
        if self.loss != AUTO and objective_of(self.loss).needs_posterior and not self.posterior:
            return [("loss", f"'{self.loss}' is the posterior's mean: it needs irl.posterior: true")]
        if self.decoding == "greedy" and self.samples_per_prompt > 1:
            return [
                (
                    "samples_per_prompt",
                    f"expected 1 with greedy decoding (it gives one continuation), got "
                    f"{self.samples_per_prompt}; use irl.decoding: sampled",
                )
            ]
        return []


@dataclass(frozen=True)
class AnalysisSettings:
    """Notebook 05: the paper's figures and tables from saved metrics, and the reward explorer."""

    compare_runs: str = setting("", doc="other run names under runs_dir to compare with (comma-separated)")
    explorer_texts: int = setting(
        20, doc="test demonstration texts where the learned reward and R* disagree most", ge=1
    )


@dataclass(frozen=True)
class Config:
    """A validated params file: every section, defaults filled in (in the params file's order)."""

    run: RunSettings
    compute: ComputeSettings
    sources: SourcesSettings
    curate: CurateSettings
    ground_truth: GroundTruthSettings
    rlhf: RlhfSettings
    dpo: DpoSettings
    infonca: InfoncaSettings
    rloo: RlooSettings
    grpo: GrpoSettings
    rft: RftSettings
    best_of_n: BestOfNSettings
    random_reward: RandomRewardSettings
    evaluation: EvaluationSettings
    irl: IrlSettings
    analysis: AnalysisSettings
    path: str = ""  # the file it came from, for messages

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The resolved settings by section (what the manifest records)."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def value(self, dotted: str) -> Any:
        section, key = dotted.split(".")
        return getattr(getattr(self, section), key)


# Section name -> its class, in the params file's order: Config's fields whose type is a section.
SECTIONS: dict[str, type] = {
    name: kind for name, kind in get_type_hints(Config).items() if dataclasses.is_dataclass(kind)
}


def changes_result(section: str, key: str) -> bool:
    """Whether a setting can change a result (see `setting(result=...)`)."""
    return SECTIONS[section].__dataclass_fields__[key].metadata["result"]


def doc(section: str, key: str) -> str:
    return SECTIONS[section].__dataclass_fields__[key].metadata["doc"]
