"""Private TensorFlow, tfmot and Keras APIs are used only in the ``_compat`` modules.

A static check (``ast``) of every module of the package but ``tf_bitpruning/_compat.py``,
``keras3/_compat.py`` and ``export/_compat.py``. It fails on

- ``tensorflow.python``, ``tensorflow.lite.python``, ``tensorflow_model_optimization.python``,
  ``keras.src`` or ``tf_keras.src``: imported, reached as attributes, or named in a string;
- an underscore name of another package: imported (``from keras import _x``), reached on one
  of its modules (``tf._x``), or reached on any object (``model._is_graph_network``,
  ``getattr(layer, "_outbound_nodes")``) unless the package itself defines that name (a
  function, a class, a module-level name, an attribute set on ``self``/``cls`` or by
  ``setattr``) outside the ``_compat`` modules;
- an underscore name of another module of the package (``costs._select``): helpers used
  across modules are public within the package. Its private modules (``_compat``,
  ``_files``) are imported as usual.
"""

from __future__ import annotations

import ast
import pathlib
import re
from typing import Dict, Iterable, List, Optional, Set

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "tf_bitpruning"
COMPAT = {"tf_bitpruning/_compat.py", "tf_bitpruning/keras3/_compat.py", "tf_bitpruning/export/_compat.py"}
FORBIDDEN = ("tensorflow.python", "tensorflow.lite.python", "tensorflow_model_optimization.python",
             "keras.src", "tf_keras.src")
# Package-private names still imported across modules, with the reason.
ALLOWED = {
    # Its class name is its serialized name in saved models; quantizers.py gets a public alias
    # when its refactor (the pow2 grid) lands.
    ("tf_bitpruning/tfkeras_api.py", "tf_bitpruning.quantizers._ClipParam"),
}
_ATTR_FUNCTIONS = {"getattr", "hasattr", "setattr", "delattr", "__setattr__", "__getattribute__"}
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


# The public API of namedtuples (and dataclass-like records) starts with one underscore.
NAMEDTUPLE_API = frozenset({"_replace", "_fields", "_asdict", "_make", "_field_defaults"})


def _private(name: str) -> bool:
    return (name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
            and name not in NAMEDTUPLE_API)


def _forbidden(dotted: str) -> bool:
    return any(dotted == p or dotted.startswith(p + ".") for p in FORBIDDEN)


def package_files(root: pathlib.Path = ROOT) -> Dict[str, pathlib.Path]:
    """``{"tf_bitpruning/api.py": path}`` for every module of the package."""
    return {p.relative_to(root).as_posix(): p for p in sorted((root / PACKAGE).rglob("*.py"))}


def module_name(relative: str) -> str:
    parts = relative[:-len(".py")].split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def own_names(trees: Iterable[ast.AST]) -> Set[str]:
    """The names the package defines: functions, classes, assigned names, attributes set
    on ``self``/``cls`` and attribute names passed to ``setattr``."""
    names: Set[str] = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif (isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                names.add(node.attr)
            elif isinstance(node, ast.Call) and _called(node) in ("setattr", "__setattr__"):
                name = _attribute_argument(node)
                if name is not None:
                    names.add(name)
    return names


def _called(call: ast.Call) -> Optional[str]:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _attribute_argument(call: ast.Call) -> Optional[str]:
    """The attribute name a getattr/setattr-like call names as a string, if any."""
    if len(call.args) >= 2 and isinstance(call.args[1], ast.Constant) and isinstance(call.args[1].value, str):
        return call.args[1].value
    return None


class _Scanner:
    """The private uses of one module (see the module doc)."""

    def __init__(self, relative: str, tree: ast.AST, own: Set[str], own_modules: Set[str]):
        self.relative, self.tree, self.own, self.own_modules = relative, tree, own, own_modules
        self.module = module_name(relative)
        self.aliases: Dict[str, str] = {}  # local name -> the module (or module member) it is bound to
        self.found: List[str] = []

    def scan(self) -> List[str]:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    self._check_module(node, alias.name)
                    self.aliases[alias.asname or alias.name.split(".")[0]] = (
                        alias.name if alias.asname else alias.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom):
                self._import_from(node)
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Attribute):
                self._attribute(node)
            elif isinstance(node, ast.Call) and _called(node) in _ATTR_FUNCTIONS:
                name = _attribute_argument(node)
                if name is not None and _private(name) and name not in self.own:
                    self._flag(node, f"{_called(node)}(..., {name!r}) of another package's object")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and _DOTTED.match(node.value) and _forbidden(node.value):
                self._flag(node, f"the private module {node.value!r}")
        return self.found

    def _flag(self, node: ast.AST, what: str) -> None:
        self.found.append(f"{self.relative}:{getattr(node, 'lineno', '?')}: {what}")

    def _own(self, dotted: str) -> bool:
        return dotted == PACKAGE or dotted.startswith(PACKAGE + ".")

    def _check_module(self, node: ast.AST, dotted: str) -> None:
        if _forbidden(dotted):
            self._flag(node, f"imports the private module {dotted}")
        elif not self._own(dotted) and any(_private(part) for part in dotted.split(".")):
            self._flag(node, f"imports the private module {dotted}")

    def _import_from(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.module.split(".")
            if not self.relative.endswith("__init__.py"):
                parts = parts[:-1]
            parts = parts[:len(parts) - node.level + 1]
            base = ".".join(parts + ([base] if base else []))
        self._check_module(node, base)
        for alias in node.names:
            dotted = f"{base}.{alias.name}"
            self.aliases[alias.asname or alias.name] = dotted
            if not _private(alias.name) or dotted in self.own_modules:
                continue
            if not self._own(base):
                self._flag(node, f"imports {alias.name} from {base}")
            elif (self.relative, dotted) not in ALLOWED:
                self._flag(node, f"imports the package-private {dotted} from another module")
            if _forbidden(dotted):
                self._flag(node, f"imports the private module {dotted}")

    def _dotted(self, node: ast.AST) -> Optional[str]:
        """What a chain of names (``tf.nn.relu``) is bound to, through the imports; None
        when it does not start at an imported name."""
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self._dotted(node.value)
            return None if base is None else f"{base}.{node.attr}"
        return None

    def _attribute(self, node: ast.Attribute) -> None:
        dotted = self._dotted(node)
        if dotted is not None and _forbidden(dotted) and not _forbidden(self._dotted(node.value) or ""):
            self._flag(node, f"reaches the private module {dotted}")
        if not _private(node.attr):
            return
        base = self._dotted(node.value)
        if base is not None and not self._own(base):
            self._flag(node, f"{base}.{node.attr}: a private name of another package")
        elif base is not None and base in self.own_modules:
            if f"{base}.{node.attr}" not in self.own_modules:
                self._flag(node, f"{base}.{node.attr}: a package-private name of another module")
        elif node.attr not in self.own:
            self._flag(node, f".{node.attr}: a private attribute of another package's object")


def private_uses(sources: Dict[str, str]) -> List[str]:
    """``path:line: what`` for every private use in ``{relative path: source}`` (see the module doc)."""
    trees = {relative: ast.parse(source, relative) for relative, source in sources.items()}
    own = own_names(tree for relative, tree in trees.items() if relative not in COMPAT)
    own_modules = {module_name(relative) for relative in sources}
    found: List[str] = []
    for relative, tree in trees.items():
        if relative not in COMPAT:
            found += _Scanner(relative, tree, own, own_modules).scan()
    return sorted(found, key=lambda f: (f.split(":")[0], int(f.split(":")[1]) if f.split(":")[1].isdigit() else 0))


def _package_sources() -> Dict[str, str]:
    return {relative: path.read_text() for relative, path in package_files().items()}


def test_private_apis_only_in_compat_modules():
    found = private_uses(_package_sources())
    assert not found, ("private APIs outside the _compat modules (move them into tf_bitpruning/_compat.py, "
                       "keras3/_compat.py or export/_compat.py):\n" + "\n".join(found))


@pytest.mark.parametrize("added", [
    "from tensorflow.python.ops import math_ops",
    "import tensorflow.python.ops.math_ops as math_ops",
    "from tensorflow_model_optimization.python.core.quantization.keras import quantize_wrapper",
    "from tf_keras.src.engine import functional",
    "from keras.src.models.functional import Functional",
    "x = keras.src.engine",
    "x = tfmot.python.core",
    "import importlib\nm = importlib.import_module('keras.src.models')",
    "def f(model):\n    return model._is_graph_network",
    "def f(layer):\n    return getattr(layer, '_outbound_nodes', [])",
    "x = tfmot._private_thing",
    "from keras import _tf_keras",
    "x = costs._select",
    "from tf_bitpruning.costs import _select",
])
def test_a_private_use_added_to_api_fails(added):
    sources = _package_sources()
    sources["tf_bitpruning/tfkeras_api.py"] += "\n" + added + "\n"  # it imports tfmot and tf_keras
    found = private_uses(sources)
    assert found and all(f.startswith("tf_bitpruning/tfkeras_api.py:") for f in found), found


@pytest.mark.parametrize("added", [
    "from tf_bitpruning import _files",                     # the package's private modules
    "from tf_bitpruning.export import _compat as _export_compat",
    "def f(layer):\n    return layer.__class__.__name__",  # dunders are not private
    "def f(model):\n    return getattr(model, '_bitprune_loss', None)",  # the package's own attribute
])
def test_the_package_s_own_names_pass(added):
    sources = _package_sources()
    sources["tf_bitpruning/tfkeras_api.py"] += "\n" + added + "\n"
    assert not private_uses(sources)
