"""`irlnb layers`: choose the IRL reward's layer on validation from a finished run (`irlnb.irl.layer_choice`),
written into the run directory (layer_choice.csv) and recorded in regress/layers-<run name>.metrics.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from irlnb.compute import resolve_device, resolve_dtype, seed_everything
from irlnb.config import Config
from irlnb.irl import layer_choice
from irlnb.layout import REPO_ROOT, RunLayout, repo_relative, write_atomic, write_json_atomic
from irlnb.metric_names import AVERAGE_LAYER
from irlnb.pipeline.provenance import held_provenance, provenance
from irlnb.rewards.features import saved_spec


def record_path(run_name: str) -> Path:
    return REPO_ROOT / "regress" / f"layers-{run_name}.metrics.json"


def run_form(layout: RunLayout) -> str:
    """The layer and pooling the run's saved reward reads (stage 04's own choice, or its params')."""
    spec = saved_spec(layout.learned_reward)[0]
    return form_name(spec.layer, spec.pooling)


def form_name(layer: int, pooling: str) -> str:
    """'layer 8, mean pooling'; the average over the blocks (`metric_names.AVERAGE_LAYER`) said as such."""
    if layer == AVERAGE_LAYER:
        return "the average of the blocks compared, mean pooling"
    return f"layer {layer}, {pooling} pooling"


def choose_layer(
    config: Config,
    layers: list[int] | None = None,
    seeds: int | None = None,
    record: Path | None = None,
    runs_dir: str | None = None,
    average: bool = False,
    split_half: bool = False,
) -> dict[str, Any]:
    """Sweep the layers on the run's validation split; the table best first, its metrics, and its provenance.
    `seeds` None: as many as notebook 04's own choice fits. `average`: the blocks' average beside them
    (`irlnb.irl.layer_choice.averaged_reading`). `split_half`: each head's agreement across halves of the
    demonstrations beside it (`irlnb.irl.layer_choice.SPLIT_HALF`)."""
    started = provenance(REPO_ROOT)  # the code that measures: read before it runs
    seeds = seeds or layer_choice.SEEDS
    layout = RunLayout.of_run(config.run, runs_dir)
    seed_everything(config.compute.seed, config.compute.torch_threads)
    device = resolve_device(config.compute.device)
    dtype = resolve_dtype(config.compute.inference_dtype, device)
    rows = layer_choice.layer_rows(
        layout, config.irl, config.sources.policy, layers, seeds, dtype, device, average, split_half
    )
    table = layer_choice.layer_table(rows)
    write_atomic(layout.root / "layer_choice.csv", lambda path: table.to_csv(path, index=False))
    result = {
        "metrics": layer_choice.layer_metrics(table, seeds),
        "params_file": repo_relative(config.path),
        "params": config.to_dict(),  # as swept: with any --set change to the file
        "run": repo_relative(layout.root),
        "run_form": run_form(layout),
        **held_provenance(started, REPO_ROOT),
    }
    if record is not None:
        write_json_atomic(record, result)
    return {"table": table, **result}
