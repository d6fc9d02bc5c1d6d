"""``bitprune_model(quantize_outputs=False)``: the model's outputs stay float (as HGQ2 leaves
them), under tf_keras and Keras 3.

The output layer keeps its quantized kernel but gets no output quantizer, so its output is
out of the bit budget and the argmax has no ties on a coarse grid; where the output is a
Softmax or Activation layer, the logits it reads stay float too. The export calibrates those
tensors at 8 bits: without ``representative_dataset`` it refuses and names them, writing
nothing; with it, the file picks Keras' class wherever 8-bit rounding cannot swap the top two.
"""

import os

import keras as keras3
import numpy as np
import pytest
import tf_keras

import tf_bitpruning as tfbp
from tf_bitpruning.export import ExportError, export_tflite
from tests.support.litert_run import run_tflite

pytest.importorskip("ai_edge_litert.interpreter")
KERASES = {"tf_keras": tf_keras, "keras3": keras3}


def _model(keras, tail: str):
    L = keras.layers
    head = [L.Dense(2, activation="softmax", name="out")] if tail == "fused" else [
        L.Dense(2, name="out"), L.Softmax(name="probs")]
    return keras.Sequential([keras.Input((8,)), L.Dense(16, activation="relu", name="hidden"), *head])


def _data(n=256):
    x = np.random.default_rng(0).normal(size=(n, 8)).astype(np.float32)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int32)


@pytest.mark.parametrize("kname", list(KERASES))
@pytest.mark.parametrize("tail", ["fused", "layer"])
def test_output_layer_keeps_its_kernel_quantized_and_its_output_float(kname, tail):
    keras = KERASES[kname]
    def names(**options):  # the input quantizer's name is numbered per session under tf_keras
        bp = tfbp.bitprune_model(_model(keras, tail), **options)
        return {n if not n.startswith("quantize_layer") else "input" for n in tfbp.bitlengths(bp)}

    quantized, left_float = names(), names(quantize_outputs=False)
    assert "out/activations" in quantized, quantized  # the default: the logits on a learned grid
    assert left_float == quantized - {"out/activations"}, (left_float, quantized)
    assert {"input", "out/weights", "hidden/activations", "hidden/weights"} <= left_float


@pytest.mark.parametrize("kname", list(KERASES))
@pytest.mark.parametrize("tail", ["fused", "layer"])
def test_float_outputs_train_to_the_budget_and_export_calibrated(kname, tail, tmp_path):
    keras = KERASES[kname]
    keras.utils.set_random_seed(0)
    x, y = _data()
    bp = tfbp.bitprune_model(_model(keras, tail), quantize_outputs=False, init_bits=4.0)
    bp.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    bp.fit(x, y, batch_size=32, epochs=2, verbose=0)
    frozen = tfbp.freeze_bitlengths(bp, target_bits=3.0)
    assert tfbp.average_bits(frozen) <= 3.0 + 1e-5  # over the quantized tensors: the output is not one
    assert {"layer": "out", "tensors": "output"} in tfbp.precision_report(frozen)["calibrated"]

    path = tmp_path / "model.tflite"
    with pytest.raises(ExportError, match=r"'out' \(output\).*quantize_outputs=False.*representative_dataset"):
        export_tflite(frozen, path)
    assert not os.listdir(tmp_path)  # a refused export leaves nothing behind

    info = export_tflite(frozen, path, representative_dataset=x[:128])
    assert {"layer": "out", "tensors": "output", "bits": 8,
            "source": "representative_dataset"} in info["calibrated"], info["calibrated"]
    got, ref = run_tflite(path, x), np.asarray(frozen(x, training=False))
    # The probabilities come from logits calibrated at 8 bits over their range: each may move a
    # few hundredths. Where Keras' top two differ by more than 0.2, the file must agree.
    decided = np.abs(ref[:, 0] - ref[:, 1]) > 0.2
    assert decided.sum() >= 64, decided.sum()
    assert (got.argmax(1) == ref.argmax(1))[decided].all()
    assert float(np.median(np.abs(got - ref))) < 0.02
