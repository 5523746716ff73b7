"""irlnb: recover the reward an RLHF-trained language model was aligned with, by inverse RL.

The package follows the paper's steps, with the plumbing apart:

    data/      step 1: the embedded assets, the Kaggle comments, curation into prompts
    models/    sources (embedded, local, hub), policies, toxicity classifiers
    rewards/   step 2: the ground-truth reward R*; linear rewards on a backbone's features
    rl/        step 3: generation, RLHF with TRL, evaluation of policies
    irl/       step 4: demonstrations, objectives, features, the study over seeds
    report/    step 5 and the figures: tables, plots, the reward explorer
    pipeline/  stages, runner, notebook context, provenance, regress, bench, CLI
    config.py (every setting and its default), metrics.py, layout.py (every path of a run)

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
