"""The runnable examples in the package's docstrings run and say what they claim."""

import doctest
import importlib

import pytest

MODULES = ["tf_bitpruning", "tf_bitpruning.api", "tf_bitpruning.configs", "tf_bitpruning.quantizers",
           "tf_bitpruning.scheme", "tf_bitpruning.callbacks", "tf_bitpruning.export.metadata"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_docstrings_have_examples():
    attempted = sum(doctest.testmod(importlib.import_module(n)).attempted for n in MODULES)
    assert attempted >= 10


def _doc_files():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    return root, [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def test_every_test_the_docs_name_exists():
    """A test cited as proof in README or docs/ must exist: `tests/x.py`,
    `tests/x.py::test_y` and bare `test_y` names are looked up in tests/."""
    import re

    root, files = _doc_files()
    defined = set()
    for path in (root / "tests").glob("*.py"):
        defined.update(re.findall(r"^\s*def (test_\w+)\(", path.read_text(), re.MULTILINE))
    missing = []
    for doc in files:
        text = doc.read_text()
        for name in re.findall(r"tests/(\w+\.py)", text):
            if not (root / "tests" / name).exists():
                missing.append(f"{doc.name}: tests/{name}")
        for name in re.findall(r"\b(test_\w+)\b", text):
            if (root / "tests" / f"{name}.py").exists():
                continue  # a test module named bare
            if name not in defined:
                missing.append(f"{doc.name}: {name}")
    assert len(defined) > 100
    assert not missing, missing
