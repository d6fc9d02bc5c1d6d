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


def _tiny(layers, grid="pow2", train=True, **options):
    model = keras.Sequential([keras.Input((8, 8, 1))] + layers)
    bp = tfbp.bitprune_model(model, grid=grid, **options)
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


def _branchy_2d():
    """Every 2D layer kind beyond the digits CNN: DepthwiseConv2D, Add, AveragePooling2D,
    Concatenate, GlobalAveragePooling2D (averages of 4 and 16 values: powers of two)."""
    L = keras.layers
    i = keras.Input((8, 8, 1))
    a = L.Conv2D(8, 3, padding="same", activation="relu", name="c")(i)
    d = L.ReLU(name="dw_relu")(L.DepthwiseConv2D(3, padding="same", name="dw")(a))
    s = L.Add(name="add")([a, d])
    p = L.AveragePooling2D(2, name="avg")(s)
    c = L.Conv2D(8, 1, activation="relu", name="c1x1")(p)
    cat = L.Concatenate(name="cat")([p, c])
    g = L.GlobalAveragePooling2D(name="gap")(cat)
    return keras.Model(i, L.Dense(10, name="logits")(g))


def _conv1d():
    """Conv1D (valid and same padding), AveragePooling1D, GlobalAveragePooling1D on digits
    read as 32 steps of 2 values (averages of 2 and 16 values)."""
    L = keras.layers
    i = keras.Input((32, 2))
    x = L.Conv1D(8, 3, padding="same", activation="relu", name="c1")(i)
    x = L.AveragePooling1D(2, name="avg1")(x)
    x = L.Conv1D(8, 3, padding="same", activation="relu", name="c2")(x)
    x = L.GlobalAveragePooling1D(name="gap1")(x)
    return keras.Model(i, L.Dense(10, name="logits")(x))


def _check_layers_equal(frozen, out, x, layers):
    """hls4ml's trace of each ``{hls name: keras wrapper}`` equals the Keras model's output there."""
    _, trace = out.hls_model.trace(x)
    for hls_name, keras_name in layers.items():
        ref = keras.Model(frozen.inputs, frozen.get_layer(keras_name).output).predict(x, verbose=0)
        assert len(np.unique(ref)) > 2, f"{keras_name}: a constant tensor would prove nothing"
        np.testing.assert_array_equal(trace[hls_name].reshape(ref.shape), ref, err_msg=hls_name)


@pytest.mark.slow
@needs_gxx
@pytest.mark.parametrize("make, layers", [
    (_branchy_2d, {"dw_relu": "quant_dw_relu", "add": "quant_add", "avg": "quant_avg", "cat": "quant_cat",
                   "gap": "quant_gap"}),
    (_conv1d, {"c1_relu": "quant_c1", "avg1": "quant_avg1", "gap1": "quant_gap1"}),
], ids=["depthwise-add-avgpool-concat-gap2d", "conv1d-avgpool1d-gap1d"])
def test_layer_kinds_emulation_equals_keras_exactly(make, layers, digits, tmp_path):
    """Each layer kind is bit-exact: no inexact layer, every traced output and the logits equal."""
    model = make()
    shape = (-1,) + tuple(model.inputs[0].shape[1:])
    xtr, ytr, xte, _ = digits
    frozen = _train_frozen(model, (xtr.reshape(shape), ytr, None, None), loss=keras.losses.
                           SparseCategoricalCrossentropy(from_logits=True), budget=4.0)
    out = tfbp.export_hls4ml(frozen, tmp_path / "prj", trace=True)
    assert out.inexact == {}
    x = xte.reshape(shape).astype(np.float32)
    _check_layers_equal(frozen, out, x, layers)
    y_keras = frozen.predict(x, verbose=0)
    np.testing.assert_array_equal(out.hls_model.predict(x), y_keras)
    assert len(np.unique(y_keras, axis=0)) > len(x) // 4  # the logits vary with the input: equality means something


@pytest.mark.slow
@needs_gxx
def test_lone_batchnorm_is_reported_and_at_most_one_step_off(digits, tmp_path):
    """A BatchNormalization after an activation cannot be folded: hls4ml multiplies by γ/σ
    rounded to 16 significant bits, so an output lands one step off only when Keras' float
    value sits within ~2^-16 (relative) of a rounding boundary of the output grid."""
    L = keras.layers
    i = keras.Input((8, 8, 1))
    x = L.BatchNormalization(name="bn")(L.Conv2D(8, 3, activation="relu", name="c")(i))
    model = keras.Model(i, L.Dense(10, name="logits")(L.Flatten()(x)))
    _, _, xte, _ = digits
    frozen = _train_frozen(model, digits, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                           budget=6.0)
    out = tfbp.export_hls4ml(frozen, tmp_path / "prj", trace=True)
    assert list(out.inexact) == ["bn"] and "on its own" in out.inexact["bn"], out.inexact
    assert out.precision["bn"]["scale"].startswith("fixed<")
    x = xte.astype(np.float32)
    _, trace = out.hls_model.trace(x)
    ref = keras.Model(frozen.inputs, frozen.get_layer("quant_bn").output).predict(x, verbose=0)
    assert len(np.unique(ref)) > 4
    step = np.diff(np.unique(ref)).min()
    diff = np.abs(trace["bn"].reshape(ref.shape) - ref)
    assert diff.max() <= step * (1 + 1e-6)
    assert (diff > 0).mean() <= 0.01


def test_lone_batchnorm_is_built_inexact_and_not_folded_across_an_activation():
    from tf_bitpruning.export.hls_graph import build

    L = keras.layers
    frozen = tfbp.freeze_bitlengths(_tiny([L.Conv2D(4, 3, activation="relu", name="c"), L.BatchNormalization(name="bn"),
                                           L.Flatten(), L.Dense(3, name="d")]))
    tfbp.align_to_hls4ml(frozen)
    graph = build(frozen)
    assert set(graph.inexact) == {"bn"}, graph.inexact  # the conv stays exact: nothing folded into it
    assert [layer.name for layer in graph.model.layers][1:] == ["c", "c_relu", "bn", "flatten", "d"]
    bn = frozen.get_layer("quant_bn").layer
    np.testing.assert_array_equal(graph.model.get_layer("bn").get_weights()[2], bn.moving_mean.numpy())
    assert set(graph.precision["bn"]) == {"scale", "bias", "result"}


def test_unsupported_layer_is_named(tmp_path):
    L = keras.layers
    frozen = tfbp.freeze_bitlengths(_tiny([L.Conv2D(2, 3), L.ZeroPadding2D(name="bad"), L.Flatten(), L.Dense(3)]))
    with pytest.raises(ExportError, match=r"'bad' \(ZeroPadding2D\) is not supported by export_hls4ml"):
        tfbp.export_hls4ml(frozen, tmp_path / "x")
    assert not (tmp_path / "x").exists()  # nothing half-written


@pytest.mark.slow
@needs_gxx
def test_example_float_model_to_hls4ml_project(tmp_path):
    """examples/hls4ml_digits.py, one epoch per phase: the project is written and its
    emulation agrees with Keras (the softmax on hls4ml's tables: within SOFTMAX_BOUND)."""
    import json
    import subprocess
    import sys

    prj = tmp_path / "prj"
    done = subprocess.run([sys.executable, "examples/hls4ml_digits.py", "--epochs=1", f"--out_dir={prj}"],
                          capture_output=True, text=True, timeout=900,
                          cwd=__file__.rsplit("/tests/", 1)[0])
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.rsplit("result: ", 1)[1])
    assert (prj / "bitpruning_precision.json").exists() and (prj / "firmware").is_dir()
    assert list(result["inexact"]) == ["dense_softmax"]
    assert result["max_diff"] <= SOFTMAX_BOUND and result["top1_agree"] >= 0.99


def test_least_error_pow2_kernels_get_their_learned_width():
    """weight_clip="mse" on pow2 grids (ternary here: steps rounded down, the largest weights
    saturate): each kernel's hls4ml type is the b-bit fixed<b, I> of its learned bitlength."""
    from tf_bitpruning.export.hls_graph import build

    L = keras.layers
    frozen = tfbp.freeze_bitlengths(_tiny([L.Conv2D(4, 3, name="c"), L.ReLU(name="r"), L.Flatten(),
                                           L.Dense(3, name="d")], weight_clip="mse", weight_bits=(2, 2)))
    graph = build(frozen)
    saturated = 0
    for name in ("c", "d"):
        w_type = graph.precision[name]["weight"]
        kernel = graph.model.get_layer(name).get_weights()[0]
        assert w_type.width == graph.bits[name]["weight"] == 2
        assert w_type.holds(kernel) and np.abs(kernel).max() > 0
        (weight, _, _, _), = _compat.weight_quantizers(frozen.get_layer(f"quant_{name}"))
        saturated += np.abs(np.asarray(weight)).max() > np.abs(kernel).max() * 1.5
    assert saturated  # the least-error step is below max|w|: the path that rounds down is tested


def test_attention_is_refused_naming_the_users_layer(tmp_path):
    """A MultiHeadAttention reaches export_hls4ml as the layers bitprune_model expanded it
    into; the refusal names the user's layer and where attention does export."""
    L = keras.layers
    inputs = keras.Input((4, 8))
    x = L.LayerNormalization()(L.Add()([inputs, L.MultiHeadAttention(2, 4, name="mha")(inputs, inputs)]))
    bp = tfbp.bitprune_model(keras.Model(inputs, L.Dense(3)(L.GlobalAveragePooling1D()(x))), grid="pow2")
    bp(np.random.default_rng(0).normal(size=(2, 4, 8)).astype(np.float32), training=True)  # sets the ranges
    with pytest.raises(ExportError, match=r"'mha\.\w+' \(EinsumDense, a piece of the MultiHeadAttention 'mha'.*"
                                          r"export_tflite"):
        tfbp.export_hls4ml(tfbp.freeze_bitlengths(bp), tmp_path / "x")
    assert not (tmp_path / "x").exists()
