"""The import contract: arrows point from nn/ and training/ down to backends/, never back.

The graph is built from the sources with ``ast``: every ``import`` and
``from ... import`` anywhere in a module (at module level, inside functions,
under ``if TYPE_CHECKING``) is an edge. ``from package import name`` is an
edge to the submodule ``package.name`` when there is one, else to
``package`` itself (its ``__init__``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import gpubackprop

PACKAGE = Path(gpubackprop.__file__).resolve().parent
ROOT = "gpubackprop"
CONCRETE_BACKENDS = ("gpubackprop.backends.numpy", "gpubackprop.backends.numba",
                     "gpubackprop.backends.cupy")
#: What no module under gpubackprop.backends may import.
ABOVE_BACKENDS = ("gpubackprop.nn.layers", "gpubackprop.nn.recurrent", "gpubackprop.nn.losses",
                  "gpubackprop.nn.optim", "gpubackprop.nn.model", "gpubackprop.training",
                  "gpubackprop.cli")


def module_names(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of a relative import written in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """``{module: {imported module: first line}}`` for imports inside the package."""
    graph = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                # "import a.b.c" names a.b.c; keep the longest prefix that is a module here.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target.startswith(ROOT) and target != name:
                    edges.setdefault(target, node.lineno)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if start in state:
            continue
        path, iterators = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while path:
            child = next(iterators[-1], None)
            if child is None:
                state[path.pop()] = 2
                iterators.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = 1
                path.append(child)
                iterators.append(iter(sorted(graph.get(child, {}))))
    return None


def describe(graph, cycle: list[str]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + \
        f" -> {cycle[-1]}"


@pytest.fixture(scope="module")
def graph():
    return import_graph(module_names())


def test_the_graph_sees_imports_inside_functions(tmp_path):
    package = tmp_path / "gpubackprop"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text("def f():\n    from . import b\n")
    (package / "sub" / "b.py").write_text("from .a import f\nimport gpubackprop.sub\n")
    graph = import_graph(module_names(package))
    assert graph["gpubackprop.sub.a"] == {"gpubackprop.sub.b": 2}
    assert graph["gpubackprop.sub.b"] == {"gpubackprop.sub.a": 1, "gpubackprop.sub": 2}
    assert find_cycle(graph) == ["gpubackprop.sub.a", "gpubackprop.sub.b", "gpubackprop.sub.a"]
    del graph["gpubackprop.sub.b"]["gpubackprop.sub.a"]
    assert find_cycle(graph) is None


def test_no_import_cycles(graph):
    cycle = find_cycle(graph)
    assert cycle is None, f"import cycle: {describe(graph, cycle)}"


@pytest.mark.parametrize("layer", ["gpubackprop.nn", "gpubackprop.training"])
def test_nn_and_training_never_import_a_concrete_backend(graph, layer):
    wrong = [f"{module} imports {target} (line {line})"
             for module, edges in graph.items() if module == layer or module.startswith(layer + ".")
             for target, line in edges.items() if target.startswith(CONCRETE_BACKENDS)]
    assert not wrong, "; ".join(wrong)


def test_backends_never_import_layers_losses_optimizers_models_training_or_cli(graph):
    wrong = [f"{module} imports {target} (line {line})"
             for module, edges in graph.items() if module.startswith("gpubackprop.backends")
             for target, line in edges.items()
             if any(target == above or target.startswith(above + ".") for above in ABOVE_BACKENDS)]
    assert not wrong, "; ".join(wrong)


def test_trainer_save_and_load_are_importable_from_the_package(tmp_path):
    from gpubackprop import Trainer, load, mlp, save

    model = mlp(3, [4], 2, device="numpy", seed=5)
    Trainer(model, verbose=0, batch_size=4).fit([[0.0, 1, 2], [1, 2, 3], [2, 0, 1]], [0, 1, 0])
    path = save(model, tmp_path / "run")
    loaded = load(path, device="numpy")
    assert type(loaded) is type(model) and loaded.config() == model.config()
    for name, W in model.state_arrays().items():
        assert (loaded.state_arrays()[name] == W).all()
