"""The quickstart notebook runs top to bottom (tiny settings), so it cannot rot: with
the Keras that ``import keras`` gives (the notebook's default) and with tf_keras."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow  # a kernel, a training run

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
KERAS_CELL = "KERAS = None  # 2 or 3; None: what import keras gives"


@pytest.mark.parametrize("keras", [None, 2], ids=["default", "tf_keras"])
def test_quickstart_notebook_executes(monkeypatch, keras):
    monkeypatch.setenv("TFBP_QUICK", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    nb = nbformat.read(os.path.join(EXAMPLES, "quickstart.ipynb"), as_version=4)
    choice = [c for c in nb.cells if c.cell_type == "code" and c.source.strip() == KERAS_CELL]
    assert len(choice) == 1, "the notebook's Keras choice cell is missing"
    choice[0].source = f"KERAS = {keras}"
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": EXAMPLES}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "float accuracy" in outputs and "fine-tuned accuracy" in outputs
    assert ("Keras 2 (tf_keras" if keras == 2 else "the default: `import keras` gives") in outputs
    assert "same outputs True, same bitlengths True" in outputs
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert images, "the bitlength plot is missing"
