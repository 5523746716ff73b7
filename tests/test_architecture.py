"""The package's structure: no module imports one that imports it back, and the steps import downward only."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "irlnb"
# Lower layers never import higher ones: plumbing over the report over the paper's steps over the basics.
LAYERS = (
    (
        "errors",
        "config",
        "params_file",
        "objectives",
        "layout",
        "metrics",
        "metric_names",
        "sources",
        "compute",
        "progress",
    ),
    ("data",),
    ("models",),
    ("rewards",),
    ("rl",),
    ("irl",),
    ("report",),
    ("pipeline",),
)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Each irlnb module and the irlnb modules it imports, anywhere in its body."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("irlnb"):
                for alias in node.names:  # `from irlnb.irl import study` names a module
                    target = f"{node.module}.{alias.name}"
                    found.add(target if target in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.startswith("irlnb")}
        graph[name] = {target for target in found if target in modules and target != name}
    return graph


def layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    for number, names in enumerate(LAYERS):
        if part in names:
            return number
    return len(LAYERS)  # irlnb itself and __main__: the top


def test_no_module_imports_one_that_imports_it_back():
    graph = imports()
    visiting, done = set(), set()

    def visit(module, path):
        if module in visiting:
            raise AssertionError("import circle: " + " -> ".join([*path, module]))
        if module in done:
            return
        visiting.add(module)
        for target in sorted(graph[module]):
            visit(target, [*path, module])
        visiting.discard(module)
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_steps_import_downward_only():
    upward = [
        f"{module} -> {target}"
        for module, targets in imports().items()
        for target in targets
        if layer(target) > layer(module) and layer(module) < len(LAYERS)
    ]
    assert not upward, "imports that run back up: " + ", ".join(sorted(upward))
