"""The browser test runs only when named (`make test-browser`, or `pytest tests/browser`): never in `make test`.

It needs Selenium (requirements-browser.txt) and Debian's chromium and chromium-driver, which `make test`
does not install; a plain `pytest` skips collecting this folder, so it imports neither.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def named_on_command_line(config) -> bool:
    """Whether an argument of this pytest run is this folder, or a file or test inside it."""
    for arg in config.args:
        path = (config.invocation_params.dir / arg.split("::")[0]).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config):
    if collection_path.resolve().parent == HERE and not named_on_command_line(config):
        return True
    return None
