"""RLHF training of one reward under `accelerate launch` (several processes or GPUs).

    accelerate launch --multi_gpu --num_processes 4 -m irlnb.rl.launch params/pythia-70m.yaml --reward ground_truth

(On a machine without CUDA the same command runs CPU processes that talk through gloo; the tests do that.)

It trains exactly what notebook 03 trains, into the same checkpoint folder (kept under the same
training key); `irlnb run` then finds the finished checkpoint, skips the training, and saves and
evaluates the policy. Stage 01 (and, for the learned reward, stage 04) must be complete.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from irlnb.compute import resolve_device, seed_everything
from irlnb.config import ConfigError
from irlnb.errors import IrlnbError
from irlnb.layout import RunLayout
from irlnb.params_file import load_config
from irlnb.rl.kinds import KINDS
from irlnb.rl.reward_signal import ALIGNMENT_REWARDS
from irlnb.rl.training import prepare_training, stage_kind, training_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="irlnb.rl.launch", description=__doc__.splitlines()[0])
    parser.add_argument("params")
    parser.add_argument("--reward", default="ground_truth", choices=ALIGNMENT_REWARDS)
    parser.add_argument("--runs-dir")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.params, args.set)
        kind = stage_kind(config, args.reward)
        if not kind.policy_gradient:
            launchable = ", ".join(name for name, record in KINDS.items() if record.policy_gradient)
            raise ConfigError(
                f"{args.params}: rlhf.trainer is {config.rlhf.trainer!r}; irlnb.rl.launch trains {launchable} "
                "(the other kinds run in notebook 03: irlnb run)"
            )
        from irlnb.rl.policy_gradient import job_trainer  # loads TRL

        layout = RunLayout.of_run(config.run, args.runs_dir)
        seed_everything(config.compute.seed, config.compute.torch_threads)
        device = resolve_device(config.compute.device)
        stage_name = f"03_rlhf_{args.reward}"
        start = prepare_training(layout, args.reward, kind, config, device)
        trainer = job_trainer(training_job(layout, stage_name, start, kind, config, device))
        trainer.accelerator.wait_for_everyone()
        if trainer.accelerator.is_main_process:
            print(
                f"irlnb.rl.launch: {stage_name} trained to step {trainer.state.global_step} "
                f"on {trainer.accelerator.num_processes} process(es); checkpoints in {trainer.args.output_dir}"
            )
    except (IrlnbError, FileNotFoundError, ValueError) as err:
        print(f"irlnb.rl.launch: error: {err}", file=sys.stderr)
        return 2
    return 0


def end_process(code: int) -> None:
    """End this rank at once, its output flushed, without tearing down the interpreter or the process group.

    Every rank has passed the last barrier and its checkpoint files are closed, so nothing is lost. Both ways of
    tearing down failed CI's `make test` once: the interpreter's own teardown with gloo's worker threads alive
    aborted a finished training (SIGABRT, "terminate called without an active exception"), and
    with `destroy_process_group()` called before it, a finished training hung until the test's 600 s limit
    (pytorch/pytorch#75097 reports such hangs)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    try:
        exit_code = main()
    except Exception:  # noqa: BLE001 - a failure, too, ends without the teardown that can hang
        traceback.print_exc()
        exit_code = 1
    end_process(exit_code)
