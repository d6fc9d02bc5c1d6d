"""Training-only layers (augmentation, noise) pass through, and nested models are
flattened (issue 19, items 1 and 2), under tf_keras and Keras 3."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras as keras3  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tf_keras  # noqa: E402
from tensorflow.lite.tools import flatbuffer_utils  # noqa: E402

import tf_bitpruning as tfbp  # noqa: E402

KERASES = {"tf_keras": tf_keras, "keras3": keras3}
BOTH = pytest.mark.parametrize("kname", sorted(KERASES))


def _ops(path) -> set:
    model = flatbuffer_utils.read_model(str(path))
    return {flatbuffer_utils.opcode_to_name(model, op.opcodeIndex) for op in model.subgraphs[0].operators}


def _augmentation(K):
    layers = [K.layers.RandomFlip("horizontal", name="flip"), K.layers.RandomRotation(0.1, name="rotate"),
              K.layers.RandomZoom(0.1, name="zoom"), K.layers.RandomTranslation(0.1, 0.1, name="shift"),
              K.layers.RandomContrast(0.2, name="contrast"), K.layers.RandomBrightness(0.1, name="bright")]
    return layers


def _train_step(model, x, y):
    model.compile("adam", "mse")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)


def _export_agrees(frozen, x, path):
    """Exports ``frozen`` without calibration data; LiteRT agrees with Keras within a few output
    steps (an unaligned model: rounding ties, see align_to_tflite). Returns the file's ops."""
    from tests.litert_run import output_step, run_tflite
    tfbp.export_tflite(frozen, path)
    got, ref = run_tflite(path, x), frozen.predict(x, verbose=0)
    assert np.abs(got - ref).max() <= 4.01 * output_step(path)
    return _ops(path)


@BOTH
def test_training_only_layers_pass_through(kname, tmp_path):
    K = KERASES[kname]
    inp = K.Input((12, 12, 3))
    x = inp
    for layer in _augmentation(K):
        x = layer(x)
    x = K.layers.Rescaling(1 / 255.0, name="rescale")(x)
    x = K.layers.Conv2D(4, 3, name="conv")(x)
    x = K.layers.GaussianNoise(0.1, name="noise")(x)
    x = K.layers.SpatialDropout2D(0.1, name="sdrop")(x)
    x = K.layers.ReLU(name="relu")(x)
    x = K.layers.GaussianDropout(0.1, name="gdrop")(x)
    x = K.layers.GlobalAveragePooling2D(name="gap")(x)
    x = K.layers.AlphaDropout(0.1, name="adrop")(x)
    if kname == "keras3":  # tf_keras: its regularization loss breaks the export graph (left undone)
        x = K.layers.ActivityRegularization(0.01, name="areg")(x)
    model = K.Model(inp, K.layers.Dense(3, name="dense")(x))
    bp = tfbp.bitprune_model(model)
    bits = tfbp.bitlengths(bp)
    # The input quantizer moved to the end of the float chain (Rescaling): no quantize_layer.
    assert "rescale/activations" in bits and not any(k.startswith("quantize_layer") for k in bits)
    assert not any(k.split("/")[0] in ("noise", "sdrop", "gdrop", "adrop", "areg") for k in bits)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 12, 12, 3)).astype("float32")
    _train_step(bp, x, rng.normal(size=(16, 3)).astype("float32"))
    frozen = tfbp.freeze_bitlengths(bp)
    ops = _export_agrees(frozen, x, tmp_path / "m.tflite")
    assert ops <= {"QUANTIZE", "DEQUANTIZE", "MUL", "ADD", "CONV_2D", "MEAN", "FULLY_CONNECTED",
                   "RESIZE_BILINEAR", "STRIDED_SLICE", "SLICE", "AVERAGE_POOL_2D", "MAXIMUM", "MINIMUM",
                   "RESHAPE"}, ops


@BOTH
def test_augmentation_last_in_the_chain_quantizes_the_input(kname):
    K = KERASES[kname]
    inp = K.Input((8, 8, 1))
    x = K.layers.RandomFlip(name="flip")(inp)
    model = K.Model(inp, K.layers.Conv2D(2, 3, name="conv")(x))
    bits = tfbp.bitlengths(tfbp.bitprune_model(model))
    assert "flip/activations" in bits and not any(k.startswith("quantize_layer") for k in bits)
