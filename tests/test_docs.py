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
