"""`make lab`: JupyterLab from the venv on the repository, offline, with the committed notebooks kept clean.

The committed notebooks under notebooks/ are saved (by hand or by JupyterLab's autosave) without
outputs, execution counts or session metadata, exactly as they were committed; a notebook run by
hand keeps its outputs on screen, and writes its results to the scratch run beside the run it
reads (see `irlnb.pipeline.context`). Executed copies made by `irlnb run` live under runs/.
"""

from __future__ import annotations

import os
import sys
import warnings

from irlnb.layout import REPO_ROOT

NOTEBOOKS = "notebooks/"
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
# What the venv's kernel reports: JupyterLab writes it into a notebook when the kernel connects, so a notebook
# committed with it opens unmodified (on another Python micro version it opens modified, and saves back as this).
LANGUAGE_INFO = {
    "codemirror_mode": {"name": "ipython", "version": 3},
    "file_extension": ".py",
    "mimetype": "text/x-python",
    "name": "python",
    "nbconvert_exporter": "python",
    "pygments_lexer": "ipython3",
    "version": "3.11.7",
}
KEPT_CELL_METADATA = ("tags",)


def clean_notebook(content: dict) -> dict:
    """A notebook as it is committed: no outputs, no execution counts, the committed metadata only."""
    for cell in content.get("cells", []):
        if cell.get("cell_type") == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cell["metadata"] = {key: value for key, value in cell.get("metadata", {}).items() if key in KEPT_CELL_METADATA}
    content["metadata"] = {"kernelspec": dict(KERNELSPEC), "language_info": dict(LANGUAGE_INFO)}
    return content


def before_save(model: dict, path: str, **kwargs) -> None:
    """Jupyter's pre-save hook: a committed notebook is written back clean; any other file as it is."""
    if model.get("type") == "notebook" and path.lstrip("/").startswith(NOTEBOOKS) and "content" in model:
        clean_notebook(model["content"])


def main(argv: list[str] | None = None) -> None:
    from jupyterlab.labapp import LabApp  # JupyterLab loads only for `make lab`
    from traitlets.config import Config

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as `irlnb run` with embedded sources: nothing reaches the hub
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config = Config()
    config.FileContentsManager.pre_save_hook = before_save
    config.ServerApp.root_dir = str(REPO_ROOT)
    config.LabApp.default_url = "/lab/tree/" + NOTEBOOKS
    # Not LabApp.launch_instance(config=...): an extension app's launch_instance drops its keyword arguments,
    # so the hook never reached the server. The server is given the config itself (command line arguments
    # and config files still override it), and applies it twice, which warns that the hook replaces itself.
    warnings.filterwarnings("ignore", message="Overriding existing pre_save_hook")
    server = LabApp.initialize_server(argv=list(sys.argv[1:] if argv is None else argv), config=config)
    server.start()


if __name__ == "__main__":
    main()
