"""Entry point of the Bazel py_test targets in tests/BUILD: runs pytest on one module.

``bazel test //tests:test_quant_ops`` runs ``python bazel_pytest.py test_quant_ops.py``
inside the runfiles tree; the module path is taken relative to this file.
"""

import os
import sys

import pytest

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    modules = [os.path.join(here, name) for name in sys.argv[1:]]
    # No .pytest_cache inside the read-only runfiles tree.
    sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *modules]))
