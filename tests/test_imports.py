"""The package's import graph: no import cycles (function-level imports included), the
layer vocabulary is a leaf, and the core loads without the Keras 3 front end."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import textwrap
from typing import Dict, List, Set

import pytest

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
    assert "tf_bitpruning.keras3.pipeline" in graph["tf_bitpruning.pipeline"]  # imported inside pipeline_for
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


# -- one front end per Keras: only the choosers ask which Keras an object belongs to ----------------------

# The choosers (frontend.py asks; pipeline.py follows its answer), the front ends themselves, and the
# package's __init__ (which imports tfbp.keras3 so that Keras 3 finds our layers).
FRONT_END_MODULES = {"tf_bitpruning", "tf_bitpruning.frontend", "tf_bitpruning.pipeline",
                     "tf_bitpruning.tfkeras_frontend", "tf_bitpruning.tfkeras_pipeline"}


def _is_front_end(module: str) -> bool:
    return module in FRONT_END_MODULES or module == "tf_bitpruning.keras3" or module.startswith("tf_bitpruning.keras3.")


def keras_questions(sources: Dict[str, str]) -> List[str]:
    """Where a module other than the chooser asks which Keras it holds: it names ``is_keras3``
    (anywhere but ``frontend.py``); or, outside the front ends, it imports the Keras 3 front end
    (``tf_bitpruning.keras3...``), imports Keras 3 inside a function (a lazy branch), or tests
    ``isinstance`` against a Keras 3 class. ``sources``: ``{module: source text}``."""
    found = []
    for module, text in sorted(sources.items()):
        tree = ast.parse(text)
        keras3_names = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                        for alias in node.names if alias.name == "keras"}
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        in_function = {id(n) for f in functions for n in ast.walk(f) if n is not f}
        for node in ast.walk(tree):
            where = f"{module}:{getattr(node, 'lineno', '?')}"
            named = (node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute)
                     else node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else "")
            if module != "tf_bitpruning.frontend" and "is_keras3" in named:
                found.append(f"{where}: names is_keras3 (ask tf_bitpruning.frontend.frontend_for)")
            if isinstance(node, ast.alias) and module != "tf_bitpruning.frontend" and "is_keras3" in node.name:
                found.append(f"{where}: imports is_keras3")
            if _is_front_end(module):
                continue
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                names += [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else []
                if any(n == "tf_bitpruning.keras3" or n.startswith("tf_bitpruning.keras3.") for n in names):
                    found.append(f"{where}: imports the Keras 3 front end (use frontend_for / pipeline_for)")
                if id(node) in in_function and any(n == "keras" or n.startswith("keras.") for n in names):
                    found.append(f"{where}: imports Keras 3 inside a function (a branch on which Keras)")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance"
                    and len(node.args) == 2 and any(isinstance(n, ast.Name) and n.id in keras3_names
                                                    for n in ast.walk(node.args[1]))):
                found.append(f"{where}: isinstance against a Keras 3 class")
    return found


def _sources() -> Dict[str, str]:
    return {module: path.read_text() for module, path in _modules().items()}


def test_only_the_chooser_asks_which_keras():
    found = keras_questions(_sources())
    assert not found, "\n".join(found)


@pytest.mark.parametrize("added", [
    "from tf_bitpruning.frontend import _is_keras3",
    "def f(model):\n    return frontend._is_keras3(model)",
    "def f(model):\n    if getattr(frontend, 'is_keras3')(model):\n        return 1",
    "def f(model):\n    from tf_bitpruning.keras3 import api\n    return api",
    "def f(model):\n    import keras\n    return model",
    "import keras\ndef f(model):\n    return isinstance(model, keras.Model)",
])
def test_a_keras_question_added_to_costs_fails(added):
    sources = _sources()
    sources["tf_bitpruning.costs"] += "\n" + added + "\n"
    found = keras_questions(sources)
    assert found and all(f.startswith("tf_bitpruning.costs:") for f in found), found


def test_front_ends_have_one_interface():
    from tf_bitpruning.frontend import FrontEnd
    from tf_bitpruning.keras3.frontend import KERAS3
    from tf_bitpruning.keras3.pipeline import KERAS3_PIPELINE
    from tf_bitpruning.pipeline import Pipeline
    from tf_bitpruning.tfkeras_frontend import TF_KERAS
    from tf_bitpruning.tfkeras_pipeline import TF_KERAS_PIPELINE
    assert isinstance(TF_KERAS, FrontEnd) and isinstance(KERAS3, FrontEnd)
    assert isinstance(TF_KERAS_PIPELINE, Pipeline) and isinstance(KERAS3_PIPELINE, Pipeline)
    # The Protocols name every method a front end has (nothing used behind the interface's back).
    for protocol, implementations in ((FrontEnd, (TF_KERAS, KERAS3)), (Pipeline, (TF_KERAS_PIPELINE, KERAS3_PIPELINE))):
        declared = {n for n in vars(protocol) if not n.startswith("_")} | set(protocol.__annotations__)
        for impl in implementations:
            public = {n for n in dir(type(impl)) if not n.startswith("_")}
            assert public == declared, (type(impl).__name__, sorted(public ^ declared))


def test_frontend_for_chooses_by_keras():
    import keras
    import tf_keras

    from tf_bitpruning.frontend import frontend_for
    assert frontend_for(tf_keras.layers.Dense(2)).name == "tf_keras"
    assert frontend_for(keras.layers.Dense(2)).name == "keras3"
    assert frontend_for(object()).name == "tf_keras"
