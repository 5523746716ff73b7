"""RLHF training of one reward under `accelerate launch` (several processes or GPUs).

    accelerate launch --multi_gpu --num_processes 4 -m irlnb.rlhf_launch params/pythia-70m.yaml --reward ground_truth

(On a machine without CUDA the same command runs CPU processes that talk through gloo; the tests do that.)

It trains exactly what notebook 03 trains, into the same checkpoint folder (keyed by the stage's
settings digest); `irlnb run` then finds the finished checkpoint, skips the training, and saves and
evaluates the policy. Stages 01 and 02 must be complete.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    from irlnb.config import ConfigError, load_config
    from irlnb.reward_model import RewardLoadError
    from irlnb.sources import SourceError
    from irlnb.notebook import set_seed_and_threads
    from irlnb.rlhf import run_stage_training
    from irlnb.runner import RunError, digest_from_markers
    from irlnb.sources import resolve_device
    from irlnb.stages import REPO_ROOT, get_stage

    parser = argparse.ArgumentParser(prog="irlnb.rlhf_launch", description=__doc__.splitlines()[0])
    parser.add_argument("params")
    parser.add_argument("--reward", default="ground_truth")
    parser.add_argument("--runs-dir")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.params)
        stage = get_stage(f"03_rlhf_{args.reward}")
        run_dir = (REPO_ROOT / (args.runs_dir or config.run.runs_dir) / config.run.name).resolve()
        digest = digest_from_markers(run_dir, stage, config.flat(stage.sections))
        set_seed_and_threads(config.compute.seed, config.compute.torch_threads)
        trainer = run_stage_training(run_dir, stage.name, digest, args.reward, config,
                                     resolve_device(config.compute.device)).trainer
        if trainer.accelerator.is_main_process:
            print(f"irlnb.rlhf_launch: {stage.name} trained to step {trainer.state.global_step} "
                  f"on {trainer.accelerator.num_processes} process(es); checkpoints in {trainer.args.output_dir}")
    except (ConfigError, RunError, SourceError, RewardLoadError, ValueError) as err:
        print(f"irlnb.rlhf_launch: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
