"""A DenseNet-like stack of concatenations exports whatever grids its ranges give (fast tier).

DenseNet121 quantized from a trained model at 4 bits with ``"ema"`` ranges failed to convert:
TFLite's converter refused a CONCATENATION whose input came on a grid other than its own
("same scale constraint"), both where the grids were 5 % apart and where they were equal but
for a float32 ulp (a concatenation that only appends channels within its input's range). Every
input stored on another grid now changes grid in a 1x1 identity depthwise conv
(``export.graph._on_output_grid``). Ranges calibrated once, no training: the grids of the
consecutive concatenations are close, which is what broke it (every seed below did).
"""

import keras as keras3
import numpy as np
import pytest
import tf_keras

import tf_bitpruning as tfbp
from tf_bitpruning.export import export_tflite
from tests.support.litert_run import output_step, run_tflite

pytest.importorskip("ai_edge_litert.interpreter")
KERASES = {"tf_keras": tf_keras, "keras3": keras3}  # Keras 3 exports through its tf_keras twin


def _dense_blocks(keras, seed: int, blocks: int = 4):
    L = keras.layers
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    x = L.ReLU()(L.BatchNormalization()(L.Conv2D(8, 3, padding="same", use_bias=False)(inputs)))
    for _ in range(blocks):
        y = L.Conv2D(4, 3, padding="same", use_bias=False)(L.ReLU()(L.BatchNormalization()(x)))
        x = L.Concatenate()([x, y])
    x = L.GlobalAveragePooling2D()(L.ReLU()(L.BatchNormalization()(x)))
    return keras.Model(inputs, L.Dense(10)(x))


@pytest.mark.parametrize("kname", list(KERASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_concatenations_on_close_grids_export_and_agree(seed, kname, tmp_path):
    x = np.random.default_rng(seed).random((64, 8, 8, 3), dtype=np.float32)
    bp = tfbp.bitprune_model(_dense_blocks(KERASES[kname], seed), activation_range="ema")
    tfbp.calibrate_ranges(bp, x)
    frozen = tfbp.freeze_bitlengths(bp)
    path = tmp_path / "dense.tflite"
    export_tflite(frozen, path)  # raised ExportError ("same scale constraint") before
    got, ref = run_tflite(path, x), np.asarray(frozen(x, training=False))
    step = output_step(path)
    # The same integers but where float rounding lands a hidden value on a grid midpoint.
    assert float(np.mean(np.abs(got - ref) > 0.5 * step + 1e-6)) <= 0.05, np.abs(got - ref).max() / step
    assert float(np.median(np.abs(got - ref))) <= 1e-6 + 0.5 * step
