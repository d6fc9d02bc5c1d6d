"""export_hls4ml: a frozen pow2 model as an hls4ml project whose C++ emulation computes
what Keras computes, to the bit (the softmax, on hls4ml's lookup tables, within a bound)."""

import shutil

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tf_bitpruning as tfbp
from tf_bitpruning import costs
from tf_bitpruning.export import ExportError, _compat
from tests.support.models import small_cnn

# CI installs hls4ml (.ci/run: the `hls4ml` extra); the refusal tests below do not need it.
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None,
                               reason="g++ is missing: hls4ml's C++ emulation (hls_model.compile) needs it")
# hls4ml's softmax: exp and 1/x from 4096-entry tables of 18-bit values (measured: < 0.005).
SOFTMAX_BOUND = 0.01


def _train_frozen(model, digits, k=keras, loss=None, budget=3.0):
    """Bit-prunes on pow2 grids, trains briefly, freezes to ``budget`` average bits, fine-tunes."""
    xtr, ytr, _, _ = digits
    xtr = xtr.reshape((-1,) + tuple(model.inputs[0].shape[1:]))
    loss = loss or k.losses.SparseCategoricalCrossentropy()
    bp = tfbp.bitprune_model(model, regularization=0.05, grid="pow2", bits_lr_multiplier=20.0)
    bp.compile(k.optimizers.Adam(3e-3), loss, metrics=["accuracy"])
    bp.fit(xtr, ytr, epochs=2, batch_size=64, verbose=0)
    frozen = tfbp.freeze_bitlengths(bp, target_bits=budget)
    frozen.compile(k.optimizers.Adam(5e-4), loss, metrics=["accuracy"])
    frozen.fit(xtr, ytr, epochs=1, batch_size=64, verbose=0)
    assert tfbp.average_bits(frozen) <= budget + 1e-6
    return frozen


@pytest.mark.slow
@needs_gxx
def test_digits_cnn_emulation_equals_keras(digits, tmp_path):
    _, _, xte, yte = digits
    frozen = _train_frozen(small_cnn(), digits)
    out = tfbp.export_hls4ml(frozen, tmp_path / "cnn", trace=True)
    # Only the softmax is inexact; every other layer is bit-exact.
    assert list(out.inexact) == ["dense_softmax"], out.inexact
    assert (tmp_path / "cnn" / "bitpruning_precision.json").exists()
    assert out.precision["conv2d"]["weight"].startswith("fixed<")
    assert out.bits["conv2d"]["weight"] == int(tfbp.bitlengths(frozen)["conv2d/weights"])
    x = xte.astype(np.float32)
    y_hls, trace = out.hls_model.trace(x)
    y_keras = frozen.predict(x, verbose=0)
    # Every quantized activation: the same values.
    for hls_name, keras_name in (("conv2d_relu", "quant_conv2d"), ("max_pooling2d", "quant_max_pooling2d"),
                                 ("conv2d_1_relu", "quant_conv2d_1")):
        ref = keras.Model(frozen.inputs, frozen.get_layer(keras_name).output).predict(x, verbose=0)
        np.testing.assert_array_equal(trace[hls_name].reshape(ref.shape), ref, err_msg=hls_name)
    # The logits: Keras' own dense and pre-softmax quantizer on Keras' features.
    dense = frozen.get_layer("quant_dense")
    features = keras.Model(frozen.inputs, frozen.get_layer("quant_flatten").output).predict(x, verbose=0)
    pre, _ = _compat.activation_vars(dense.layer.activation)
    (w, q, v, _), = _compat.weight_quantizers(dense)
    z = tf.matmul(features, q(w, False, v)) + dense.layer.bias
    logits = dense.quantize_config.activation_quantizer(z, False, pre).numpy()
    np.testing.assert_array_equal(trace["dense"], logits)
    np.testing.assert_allclose(y_hls, y_keras, atol=SOFTMAX_BOUND)
    assert (y_hls.argmax(1) == y_keras.argmax(1)).mean() >= 0.99
    assert (y_keras.argmax(1) == yte).mean() > 0.85


@pytest.mark.slow
@needs_gxx
def test_keras3_mlp_emulation_equals_keras_exactly(digits, tmp_path):
    import keras as k3

    _, _, xte, _ = digits
    # Flat inputs: a Keras 3 Flatten right after the input has no tf_keras twin yet (keras3/bridge.py).
    model = k3.Sequential([k3.Input((64,)), k3.layers.Dense(32, activation="relu"),
                           k3.layers.Dense(16, activation="relu"), k3.layers.Dense(10)])
    frozen = _train_frozen(model, digits, k3, k3.losses.SparseCategoricalCrossentropy(from_logits=True))
    out = tfbp.export_hls4ml(frozen, tmp_path / "mlp")
    assert out.inexact == {}
    out.hls_model.compile()
    x = xte.reshape(-1, 64).astype(np.float32)
    np.testing.assert_array_equal(out.hls_model.predict(x), frozen.predict(x, verbose=0))


def _tiny(layers, grid="pow2", train=True):
    model = keras.Sequential([keras.Input((8, 8, 1))] + layers)
    bp = tfbp.bitprune_model(model, grid=grid)
    if train:
        bp.compile("adam", "mse")
        x = np.random.default_rng(0).uniform(0, 1, (32, 8, 8, 1)).astype("float32")
        bp.fit(x, bp.predict(x, verbose=0), epochs=1, verbose=0)
    return bp


def test_refuses_unfrozen_default_grid_and_unsupported_layers(tmp_path):
    L = keras.layers
    with pytest.raises(ValueError, match="export_hls4ml: .* not frozen"):
        tfbp.export_hls4ml(_tiny([L.Flatten(), L.Dense(3)], train=False), tmp_path / "a")
    default = tfbp.freeze_bitlengths(_tiny([L.Flatten(), L.Dense(3)], grid="minmax"))
    with pytest.raises(ExportError, match="grid='pow2'"):
        tfbp.export_hls4ml(default, tmp_path / "b")
    transposed = tfbp.freeze_bitlengths(_tiny([L.Conv2DTranspose(2, 3, name="up"), L.Flatten(), L.Dense(3)]))
    with pytest.raises(ExportError, match="'up' .*Conv2DTranspose.* not supported"):
        tfbp.export_hls4ml(transposed, tmp_path / "c")


def test_bn_folding_is_reported_inexact_and_biases_align(tmp_path):
    L = keras.layers
    frozen = tfbp.freeze_bitlengths(_tiny([L.Conv2D(4, 3, name="c"), L.BatchNormalization(name="bn"), L.ReLU(name="r"),
                                           L.Flatten(), L.Dense(3, name="d")]))
    moved = tfbp.align_to_hls4ml(frozen)
    assert set(moved) <= {"d"} and all(0 <= m <= 0.5 for m in moved.values())
    assert tfbp.align_to_hls4ml(frozen) == {}  # on the grid now
    from tf_bitpruning.export.hls_graph import build

    graph = build(frozen)
    assert set(graph.inexact) == {"c"} and "BatchNormalization 'bn' folded" in graph.inexact["c"]
    assert [layer.name for layer in graph.model.layers][1:] == ["c", "r", "flatten", "d"]
    for t in costs.quantized_tensors(frozen):
        assert t.quantizer.grid == "pow2"
