"""The import graph of bench/ has no circle, and the commands that only print do not import torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from bench.host import BUILTIN_PLUGINS, COMMAND_PLUGINS
from tests.conftest import REPO, bench_env

BENCH = REPO / "bench"


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The bench modules that ``path`` imports, at its top or inside functions (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    typing_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and "TYPE_CHECKING" in ast.unparse(block.test) for stmt in block.body for node in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def bench_import_graph() -> dict[str, set[str]]:
    modules = {"bench" if p.stem == "__init__" else f"bench.{p.stem}": p for p in BENCH.glob("*.py")}
    return {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_of_bench_has_no_circle():
    graph = bench_import_graph()
    assert "bench.api" in graph["bench.grid"] or "bench.study" in graph["bench.grid"]  # the graph is read at all
    assert "bench.api" not in graph["bench.grid"]
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["cancel", "--help"]])
def test_commands_that_only_print_do_not_import_torch(args):
    code = ("import sys\nfrom bench.cli import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=bench_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.stderr.strip().splitlines()[-1] == "NO TORCH", proc.stderr
    assert "Usage: " in proc.stdout
    if args == ["--help"]:
        assert "cancel" in proc.stdout  # the built-in plugin command is still listed


def test_the_command_plugins_are_exactly_the_built_ins_that_add_commands():
    """``bench --help`` loads only COMMAND_PLUGINS of the built-ins: the list must name every one with a bench_cli."""
    plugins = REPO / "plugins"
    with_commands = {m for m in BUILTIN_PLUGINS
                     if any(isinstance(node, ast.FunctionDef) and node.name == "bench_cli"
                            for node in ast.walk(ast.parse((plugins / f"{m.rsplit('.', 1)[1]}.py").read_text())))}
    assert with_commands == set(COMMAND_PLUGINS)


def _run_cli_in_a_fresh_process(args: list[str]) -> tuple[str, bool]:
    """``bench ARGS``'s output, and whether torch was imported by then."""
    code = ("import sys\nfrom bench.cli import main\n"
            f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO TORCH', file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=bench_env(), capture_output=True, text=True,
                          timeout=120)
    return proc.stdout, proc.stderr.strip().splitlines()[-1] == "TORCH"


def test_listing_the_plugins_does_not_import_torch_and_shows_what_each_registered():
    listing, imported_torch = _run_cli_in_a_fresh_process(["plugins"])
    assert not imported_torch
    for registered in ("models: cnn, deep-linear, linear, mlp", "losses: crossentropy, hinge, mse",
                       "datasets: fashion-mnist, kmnist, mnist", "executors: local, process, ray",
                       "optimizers: adam, adamw, sgd", "schedules: constant, cosine, warmup-cosine"):
        assert f"registered {registered}\n" in listing
    assert listing.count("builtin      ok\n") == len(BUILTIN_PLUGINS)


def test_listing_the_components_does_not_import_torch_and_shows_their_params():
    listing, imported_torch = _run_cli_in_a_fresh_process(["list"])
    assert not imported_torch
    assert "params: hidden=256, depth=1, activation='relu'   plugin: bench.plugins.models" in listing
    assert "params: beta1=0.9, beta2=0.999, eps=1e-08   plugin: bench.plugins.optimizers" in listing
    assert "params: jobs=None   plugin: bench.plugins.executors" in listing


def test_a_lazily_registered_factory_is_the_class_it_names_once_used():
    """The built-in optimizers and executors are registered by name; used, they are the classes themselves."""
    import torch

    from bench.host import Host
    from bench.optim import accepts_keyword
    from bench.plugins.batched_optimizers import BatchedAdamW
    from bench.plugins.optimizer_classes import AdamW
    from bench.runner import LocalExecutor

    registry = Host(autoload=False).registry
    factory = registry.get("optimizer", "adamw").factory
    assert factory.batched is BatchedAdamW and accepts_keyword(factory, "capturable")
    assert type(factory([torch.zeros(3, requires_grad=True)], lr=0.1)) is AdamW
    assert type(registry.get("executor", "local").factory()) is LocalExecutor
