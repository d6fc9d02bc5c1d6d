"""The package's import graph: no import cycles (function-level imports included), the
layer vocabulary is a leaf, and the core loads without the Keras 3 front end."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import textwrap
from typing import Dict, List, Set

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "tf_bitpruning"


def _modules() -> Dict[str, pathlib.Path]:
    """``{"tf_bitpruning.export.plan": path}`` for every module of the package."""
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imported(module: str, path: pathlib.Path, modules: Set[str]) -> Set[str]:
    """The package modules ``module`` imports, at module level or in a function. ``from a
    import b`` imports ``a.b`` where that is a module, else ``a``; a parent package that
    Python loads first is not counted (it is not what the import asks for)."""
    names: List[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names += [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                      for alias in node.names]
    found = set()
    for name in names:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)
    return found


def import_graph() -> Dict[str, Set[str]]:
    """``{module: the package modules it imports}``."""
    modules = _modules()
    return {module: _imported(module, path, set(modules)) for module, path in modules.items()}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The import cycles of ``graph``: its strongly connected parts of two or more modules."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    found: List[List[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while not part or part[-1] != v:
                part.append(stack.pop())
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles (module-level and function-level imports):\n" + "\n".join(
        " <-> ".join(part) for part in found)


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_function_level_imports():
    graph = import_graph()
    assert "tf_bitpruning.keras3.api" in graph["tf_bitpruning.api"]  # imported inside bitprune_model
    assert "tf_bitpruning.layer_kinds" in graph["tf_bitpruning.registry"]


def test_layer_kinds_is_a_leaf():
    assert import_graph()["tf_bitpruning.layer_kinds"] == set()


def test_core_loads_without_the_keras3_front_end():
    """``tf_bitpruning.costs`` (and what it imports) loads without ``tf_bitpruning.keras3``.
    The package's ``__init__`` imports everything, so it is skipped: the package is made an
    empty namespace, then the module is imported as the rest of the package would."""
    code = textwrap.dedent(f"""
        import importlib.util, sys, types
        spec = importlib.util.find_spec("{PACKAGE}")
        package = types.ModuleType("{PACKAGE}")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["{PACKAGE}"] = package
        import tf_bitpruning.costs
        print(sorted(name for name in sys.modules if name.startswith("{PACKAGE}.")))
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = proc.stdout.strip().splitlines()[-1]
    assert "tf_bitpruning.costs" in loaded
    assert "tf_bitpruning.keras3" not in loaded, loaded
