"""The runnable examples in the package's docstrings run and say what they claim."""

import doctest
import importlib

import pytest

MODULES = ["tf_bitpruning", "tf_bitpruning.api", "tf_bitpruning.tfkeras_api", "tf_bitpruning.configs", "tf_bitpruning.quantizers",
           "tf_bitpruning.scheme", "tf_bitpruning.callbacks", "tf_bitpruning.export.metadata",
           "tf_bitpruning.keras3.ops"]


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


def _generated(text: str) -> bool:
    """A page a committed benchmark script wrote: it names its command and commit."""
    import re

    return re.search(r"Made by `python benchmarks/\w+\.py[^`]*`.*\bcommit [0-9a-f]{7}", text) is not None


def test_readme_tables_are_copied_from_generated_pages():
    """Every table row in the README is a row of a page a benchmark script wrote (issue 18):
    no hand-made tables."""
    root, files = _doc_files()
    generated = "\n".join(p.read_text() for p in files[1:] if _generated(p.read_text()))
    rows = [line for line in (root / "README.md").read_text().splitlines()
            if line.startswith("|") and not set(line) <= set("|-: ")]
    assert rows, "the README shows one results table"
    assert not [row for row in rows if row not in generated.splitlines()]


def test_docs_tables_of_numbers_say_which_command_made_them():
    """A docs page with a table of measured numbers starts with the command and commit that made it."""
    import re

    _, files = _doc_files()
    unstamped = []
    for path in files[1:]:
        text = path.read_text()
        numeric_rows = [line for line in text.splitlines()
                        if line.startswith("|") and re.search(r"\|\s*[0-9][0-9.]*\s*(%|±|\||×)", line)]
        if numeric_rows and not _generated(text):
            unstamped.append(path.name)
    assert not unstamped, unstamped


def test_api_reference_documents_every_public_name():
    """docs/api.md renders (mkdocstrings) every name tf_bitpruning and tfbp.keras3 export."""
    import tf_bitpruning
    from tf_bitpruning import keras3

    root, _ = _doc_files()
    text = (root / "docs" / "api.md").read_text()
    expected = [f"tf_bitpruning.{n}" for n in tf_bitpruning.__all__ if n != "keras3"]
    expected += [f"tf_bitpruning.keras3.{n}" for n in keras3.__all__]
    assert not [n for n in expected if f"::: {n}\n" not in text]


def test_readme_links_stay_in_the_repository():
    """The README links files of this repository (which exist), and outside it only the paper."""
    import re

    root, _ = _doc_files()
    text = (root / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    outside = [link for link in links if re.match(r"\w+://", link) and link != "https://arxiv.org/abs/2002.03090"]
    missing = [link for link in links if not re.match(r"\w+://", link)
               and not (root / link.split("#")[0]).exists()]
    assert not outside and not missing, (outside, missing)
