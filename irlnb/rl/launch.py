"""RLHF training of one reward under `accelerate launch` (several processes or GPUs).

    accelerate launch --multi_gpu --num_processes 4 -m irlnb.rl.launch params/pythia-70m.yaml --reward ground_truth

(On a machine without CUDA the same command runs CPU processes that talk through gloo; the tests do that.)

It trains exactly what notebook 03 trains, into the same checkpoint folder (kept under the same
training key); `irlnb run` then finds the finished checkpoint, skips the training, and saves and
evaluates the policy. Stage 01 (and, for the learned reward, stage 04) must be complete.
"""

from __future__ import annotations

import argparse
import sys

from irlnb.compute import resolve_device, seed_everything
from irlnb.config import ConfigError, load_config
from irlnb.errors import IrlnbError
from irlnb.layout import RunLayout
from irlnb.rl.training import REWARD_KINDS, RL_TRAINERS, prepare_training, train_rloo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="irlnb.rl.launch", description=__doc__.splitlines()[0])
    parser.add_argument("params")
    parser.add_argument("--reward", default="ground_truth", choices=REWARD_KINDS)
    parser.add_argument("--runs-dir")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.params)
        if config.rlhf.trainer not in RL_TRAINERS:
            raise ConfigError(
                f"{args.params}: rlhf.trainer is {config.rlhf.trainer!r}; irlnb.rl.launch trains rloo "
                "or grpo (rft and best_of_n run in notebook 03: irlnb run)"
            )
        layout = RunLayout.of_run(config.run, args.runs_dir)
        seed_everything(config.compute.seed, config.compute.torch_threads)
        device = resolve_device(config.compute.device)
        start = prepare_training(layout, args.reward, config, device)
        trainer = train_rloo(layout, f"03_rlhf_{args.reward}", start, config, device)
        if trainer.accelerator.is_main_process:
            print(
                f"irlnb.rl.launch: 03_rlhf_{args.reward} trained to step {trainer.state.global_step} "
                f"on {trainer.accelerator.num_processes} process(es); checkpoints in {trainer.args.output_dir}"
            )
    except (IrlnbError, FileNotFoundError, ValueError) as err:
        print(f"irlnb.rl.launch: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
