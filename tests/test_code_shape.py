"""The package's shape: layers import only downwards, no import circles, short functions.

Layers, bottom to top (a module may import its own layer and the ones below):
  0 errors, checks, fileio, loads_csv  plain helpers (checks: the one validation layer for numbers)
  1 planning                           pure planners and the dispatch arithmetic
  2 online, sim, plan_io, workloads    pure control plane and simulator; plan files; workload data
  3 models, profiling, predictor, serving, interop   torch code; engines' load records to profiles
  4 jobs, bench, integrations          one job per stage (bench: the bench job's stages); engine plug-ins
  5 cli, __main__                      commands
Imports under `if TYPE_CHECKING:` count too: a type-only import still ties the modules together.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src" / "moeless_cli"
LAYERS = {
    "errors": 0, "checks": 0, "fileio": 0, "loads_csv": 0,
    "planning": 1,
    "online": 2, "sim": 2, "plan_io": 2, "workloads": 2,
    "models": 3, "profiling": 3, "predictor": 3, "serving": 3, "interop": 3,
    "jobs": 4, "bench": 4, "integrations": 4,
    "cli": 5, "__main__": 5, "__init__": 5,
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """module -> moeless_cli modules it imports (anywhere in the file)."""
    modules = {_module(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("moeless_cli"):
                for alias in node.names:  # `from pkg import module` names a module
                    child = f"{node.module}.{alias.name}"
                    found.add(child if child in modules else node.module)
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("moeless_cli")}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def test_every_package_has_a_layer():
    top = {p.stem if p.is_file() else p.name for p in SRC.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert top <= set(LAYERS), f"give these a layer: {sorted(top - set(LAYERS))}"


def test_imports_only_go_down():
    upward = [f"{a} -> {b}" for a, bs in _imports().items() for b in bs if _layer(b) > _layer(a)]
    assert not upward, upward


def test_no_import_circles():
    graph, state, cycles = _imports(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def test_no_function_over_60_lines():
    long = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}")
    assert not long, long


def _command_functions(info: Any) -> list[Any]:
    """The functions behind every command and group callback of a typer app, unwrapped."""
    found = [inspect.unwrap(c.callback) for c in info.registered_commands]
    for group in info.registered_groups:
        callback = group.typer_instance.registered_callback
        if callback is not None and callback.callback is not None:
            found.append(inspect.unwrap(callback.callback))
        found += _command_functions(group.typer_instance)
    return found


def test_command_bodies_are_thin():
    """A command's body (after its docstring) stays under 30 lines: the work is in its job."""
    from moeless_cli.cli.app import app

    functions = _command_functions(app)
    assert {f.__name__ for f in functions} >= {"plan", "export", "serve_command", "bench", "train_predictor"}
    thick = []
    for function in functions:
        node = ast.parse(textwrap.dedent(inspect.getsource(function))).body[0]
        body = node.body[1:] if ast.get_docstring(node) else node.body
        if body and body[-1].end_lineno - body[0].lineno + 1 >= 30:
            thick.append(f"{function.__module__}.{function.__name__}")
    assert not thick, thick
