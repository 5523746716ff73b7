"""irlnb: recover the reward an RLHF-trained language model was aligned with, by inverse RL.

The notebooks in notebooks/ are thin; the code they call lives here. Modules are imported lazily
so that `irlnb check` answers before torch and transformers are loaded.
"""

from irlnb.notebook import begin_stage
from irlnb.runio import read_metrics, record_metrics, save_figure


def load_reward(path, device: str = "cpu"):
    """A reward saved by notebook 04 (`runs/<name>/irl/reward`): `.score(texts)` -> numpy array, higher = more expert-like."""
    from irlnb.reward_model import load_reward as load

    return load(path, device=device)


__all__ = ["begin_stage", "load_reward", "read_metrics", "record_metrics", "save_figure"]
