"""irlnb: recover the reward an RLHF-trained language model was aligned with, by inverse RL.

The notebooks in notebooks/ are thin; the code they call lives here. Modules are imported lazily
so that `irlnb check` answers before torch and transformers are loaded.
"""

from irlnb.notebook import begin_stage
from irlnb.runio import read_metrics, record_metrics, save_figure

__all__ = ["begin_stage", "read_metrics", "record_metrics", "save_figure"]
