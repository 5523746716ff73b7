"""irlnb: recover the reward an RLHF-trained language model was aligned with, by inverse RL.

The package follows the paper's steps, with the plumbing apart:

    data/      step 1: the embedded assets, the Kaggle comments, curation into prompts, out-of-domain texts
    models/    policies, toxicity classifiers (the tox-block port, the independent evaluators)
    rewards/   step 2: the ground-truth reward R*; linear rewards on a backbone's features; the white-box reward
    rl/        step 3: the expert, one record per kind of alignment (rl/kinds.py: DPO, the default; RLOO and
               GRPO with TRL; rejection-sampling fine-tuning; best-of-n), generation, evaluation of policies
    irl/       step 4: demonstrations, cached features, fitting and judging a reward head, the references
               beside it, the study over seeds, the choice of layer
    report/    step 5 and the figures: tables, plots, the reward explorer
    pipeline/  stages, runner, notebook context, provenance, regress, bench, the opt-in studies, CLI

Beside them: config.py (every setting and its default), params_file.py (reading and validating a params
file), objectives.py (the IRL objectives), sources.py (embedded, local, hub), layout.py (every path of a
run), metrics.py, metric_names.py, compute.py, progress.py, errors.py.

The notebooks in notebooks/ are thin: they call `begin_stage` and then these modules.
"""

__all__ = ["begin_stage", "load_reward"]


def __getattr__(name: str):
    # Exported lazily: `import irlnb` (and `irlnb check`) must not load torch.
    if name == "begin_stage":
        from irlnb.pipeline.context import begin_stage

        return begin_stage
    if name == "load_reward":
        from irlnb.rewards.features import load_reward

        return load_reward
    raise AttributeError(f"module 'irlnb' has no attribute {name!r}")
