"""bitprune_model and friends: layers, tfmot's flow, and every error before training."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras as keras

import tf_bitpruning as tfbp
from tf_bitpruning import costs
from tests.support.models import small_cnn

L = keras.layers


def _functional_bn_add_depthwise():
    inp = keras.Input((8, 8, 1))
    x = L.Conv2D(8, 3, padding="same")(inp)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    y = L.DepthwiseConv2D(3, padding="same")(x)
    y = L.BatchNormalization()(y)
    y = L.ReLU()(y)
    x = L.Add()([x, y])
    x = L.GlobalAveragePooling2D()(x)
    out = L.Dense(10, activation="softmax")(x)
    return keras.Model(inp, out)


def test_bitlengths_and_average_start_at_init():
    bp = tfbp.bitprune_model(small_cnn(), init_bits=6.0)
    bits = tfbp.bitlengths(bp)
    assert sorted(bits) == sorted([
        "quantize_layer/activations", "conv2d/weights", "conv2d/activations",
        "conv2d_1/weights", "conv2d_1/activations", "dense/weights", "dense/activations"])
    assert all(v == pytest.approx(6.0) for v in bits.values())
    for weighting in ("uniform", "memory", "bops"):
        assert tfbp.average_bits(bp, weighting=weighting) == pytest.approx(6.0, rel=1e-5)
    assert tfbp.average_bits(bp, kind="weights") == pytest.approx(6.0)
    assert bp.losses and float(tf.add_n(bp.losses)) == pytest.approx(0.05 * 6.0, rel=1e-5)


def test_memory_and_bops_weightings():
    bp = tfbp.bitprune_model(small_cnn())
    tensors = {t.name: t for t in costs.quantized_tensors(bp)}
    assert tensors["conv2d/weights"].elements == 3 * 3 * 1 * 16
    assert tensors["conv2d/weights"].macs == 3 * 3 * 1 * 16 * 8 * 8
    assert tensors["dense/weights"].macs == 512 * 10
    assert tensors["conv2d_1/weights"].input is tensors["conv2d/activations"]  # through MaxPooling
    assert tensors["dense/weights"].input is tensors["conv2d_1/activations"]  # through Flatten
    tensors["dense/weights"].bits_variable.assign(2.0 / 10)  # n = 2, param = n / multiplier
    mem = sum(t.elements * (2.0 if n == "dense/weights" else 8.0) for n, t in tensors.items())
    mem /= sum(t.elements for t in tensors.values())
    assert tfbp.average_bits(bp, weighting="memory") == pytest.approx(mem, rel=1e-5)
    w = [t for t in tensors.values() if t.kind == "weights"]
    bops = sum(t.macs * (2.0 if t.name == "dense/weights" else 8.0) * 8.0 for t in w)
    assert tfbp.average_bits(bp, weighting="bops") == pytest.approx(np.sqrt(bops / sum(t.macs for t in w)), rel=1e-5)


def test_functional_bn_add_depthwise_quantizes_after_bn():
    model = _functional_bn_add_depthwise()
    bp = tfbp.bitprune_model(model)
    names = set(tfbp.bitlengths(bp))
    assert {"conv2d/weights", "depthwise_conv2d/weights", "re_lu/activations", "re_lu_1/activations",
            "add/activations", "global_average_pooling2d/activations", "dense/weights"} <= names
    # The conv and BN outputs are re-quantized after ReLU: no quantizer of their own.
    assert not any(n.startswith(("conv2d/act", "batch_normalization")) for n in names)
    x = np.random.RandomState(0).rand(4, 8, 8, 1).astype("float32")
    np.testing.assert_allclose(bp(x).numpy().sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.slow  # trains two epochs
def test_conv1d_and_separable_conv():
    inp = keras.Input((16, 3))
    x = L.Conv1D(8, 3, activation="relu")(inp)
    x = L.SeparableConv1D(8, 3, activation="relu")(x)
    x = L.GlobalAveragePooling1D()(x)
    model = keras.Model(inp, L.Dense(2)(x))
    bp = tfbp.bitprune_model(model)
    names = set(tfbp.bitlengths(bp))
    assert {"conv1d/weights", "separable_conv1d/depthwise_kernel", "separable_conv1d/pointwise_kernel"} <= names
    x = np.random.RandomState(0).randn(32, 16, 3).astype("float32")
    y = np.random.RandomState(1).randint(0, 2, 32)
    bp.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = bp.fit(x, y, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert tfbp.average_bits(bp) < 8.0


def test_tfmot_annotate_apply_flow_and_custom_layer_config():
    class Scale(L.Layer):
        def build(self, input_shape):
            self.kernel = self.add_weight("kernel", shape=(input_shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.kernel

    inp = keras.Input((6,))
    x = L.Dense(4, activation="relu")(inp)
    x = tfbp.bitprune_annotate_layer(
        Scale(name="scale"), tfbp.BitPruneQuantizeConfig(["kernel"], [], quantize_output=True))(x)
    model = keras.Model(inp, L.Dense(2)(x))
    annotated = tfbp.bitprune_annotate_model(model)
    with tfbp.bitprune_scope({"Scale": Scale}):
        qmodel = tfmot.quantization.keras.quantize_apply(annotated, tfbp.BitPruneQuantizeScheme())
    names = {t.name for t in costs.quantized_tensors(qmodel)}
    assert {"scale/weights", "scale/activations", "dense/weights"} <= names


def test_skip_layers_leaves_layer_float():
    model = small_cnn()
    bp = tfbp.bitprune_model(model, skip_layers=["dense"])
    assert not any(name.startswith("dense/") for name in tfbp.bitlengths(bp))


def test_per_channel_bitlengths():
    bp = tfbp.bitprune_model(small_cnn(), per_channel_bits=True)
    t = {t.name: t for t in costs.quantized_tensors(bp)}["conv2d/weights"]
    assert t.bits_variable.shape == (1, 1, 1, 16)


# --- errors -------------------------------------------------------------------

def test_keras3_models_take_bitprune_model_not_the_tfmot_api():
    """bitprune_model takes Keras 3 models (tests/test_keras3.py); the tfmot-style
    annotate/apply API stays tf_keras-only and says what to call instead."""
    import keras as keras3

    model = keras3.Sequential([keras3.Input((4,)), keras3.layers.Dense(2, name="head")])  # named: any test order
    assert sorted(tfbp.bitlengths(tfbp.bitprune_model(model))) == [
        "head/activations", "head/weights", "quantize_layer/activations"]
    for call in (tfbp.bitprune_annotate_model, tfbp.bitprune_apply):
        with pytest.raises(TypeError, match="Keras 3.*bitprune_model"):
            call(model)


def test_subclassed_model_is_rejected():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = L.Dense(2)

        def call(self, x):
            return self.d(x)

    net = Net()
    net(np.zeros((1, 3), "float32"))
    with pytest.raises(ValueError, match="subclassed model.*functional API"):
        tfbp.bitprune_model(net)


def test_nested_model_is_flattened_by_bitprune_model_only():
    """bitprune_model flattens a nested model (tests/test_nested.py); tfmot's quantize_apply
    cannot take one, so bitprune_apply refuses it and says what flattens it."""
    inner = keras.Sequential([keras.Input((4,)), L.Dense(3, name="inner_dense")], name="inner")
    inp = keras.Input((4,))
    model = keras.Model(inp, L.Dense(2)(inner(inp)))
    assert "inner_dense/weights" in tfbp.bitlengths(tfbp.bitprune_model(model))
    with pytest.raises(ValueError, match="nested model.*inner.*flatten"):
        tfbp.bitprune_apply(model)


def test_unsupported_layer_is_named_with_what_to_do():
    inp = keras.Input((5, 3))
    x = L.SimpleRNN(4, name="my_rnn")(inp)  # (LSTM and GRU are supported now)
    model = keras.Model(inp, L.Dense(2)(x))
    with pytest.raises(ValueError, match="my_rnn.*SimpleRNN") as err:
        tfbp.bitprune_model(model)
    assert "bitprune_annotate_layer" in str(err.value) and "skip_layers" in str(err.value)


def test_unsupported_activation_is_named():
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, activation="elu", name="elu_dense")])
    with pytest.raises(ValueError, match="elu_dense.*'elu'"):
        tfbp.bitprune_model(model)


def test_unbuilt_model_is_rejected():
    with pytest.raises(ValueError, match="not built"):
        tfbp.bitprune_model(keras.Sequential([L.Dense(2)]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(weight_bits=(6, 4)), "min_bits=6 > max_bits=4"),
    (dict(activation_bits=(3, 2)), "min_bits=3 > max_bits=2"),
    (dict(weight_bits=(1, 8)), "weight_bits=.*outside"),
    (dict(regularization=-0.1), "regularization"),
    (dict(regularization=float("nan")), "regularization"),
    (dict(weighting="energy"), "Unknown weighting 'energy'"),
    (dict(init_bits=9), "init_bits=9 is outside"),
    (dict(init_bits=1.5), "init_bits=1.5 is outside weight_bits"),
    (dict(bits_lr_multiplier=0), "bits_lr_multiplier"),
    (dict(activation_range="minmax"), "activation_range.*'expand', 'ema'.*'minmax'"),
])
def test_invalid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tfbp.bitprune_model(small_cnn(), **kwargs)


def test_activation_range_option_reaches_every_activation_quantizer():
    for choice in ("expand", "ema"):
        bp = tfbp.bitprune_model(small_cnn(), activation_range=choice)
        kinds = {t.quantizer.range_update for t in costs.quantized_tensors(bp) if t.kind == "activations"}
        assert kinds == {choice}


def test_apply_without_annotation_and_double_pruning():
    with pytest.raises(ValueError, match="no layer is annotated"):
        tfbp.bitprune_apply(small_cnn())
    bp = tfbp.bitprune_model(small_cnn())
    with pytest.raises(ValueError, match="already bit-pruned"):
        tfbp.bitprune_model(bp)


def test_bitlengths_of_a_plain_model_is_a_clear_error():
    with pytest.raises(ValueError, match="bitprune_model"):
        tfbp.bitlengths(small_cnn())


def test_init_bits_defaults_to_the_top_of_each_range():
    bp = tfbp.bitprune_model(small_cnn(), weight_bits=(2, 6), activation_bits=(1, 5))
    bits = tfbp.bitlengths(bp)
    assert bits["conv2d/weights"] == pytest.approx(6.0) and bits["conv2d/activations"] == pytest.approx(5.0)


@pytest.mark.parametrize("keras_name", ["tf_keras", "keras3"])
def test_quantize_inputs_false_leaves_the_inputs_float(keras_name):
    """quantize_inputs=False: no input quantizer (nor one moved past preprocessing); the
    same tensors as the default otherwise, under both Kerases."""
    import importlib

    k = importlib.import_module("tf_keras" if keras_name == "tf_keras" else "keras")

    def model():
        inputs = k.Input((8, 8, 1))
        x = k.layers.Rescaling(2.0, name="rescaling")(inputs)
        x = k.layers.Flatten(name="flatten")(k.layers.Conv2D(4, 3, name="conv")(x))
        return k.Model(inputs, k.layers.Dense(3, name="head")(x))

    default = set(tfbp.bitlengths(tfbp.bitprune_model(model())))
    floats = set(tfbp.bitlengths(tfbp.bitprune_model(model(), quantize_inputs=False)))
    assert "rescaling/activations" in default  # the input quantizer, moved past the preprocessing
    assert default - floats == {"rescaling/activations"}, (default, floats)


def test_bitprune_options_are_bitprune_apply_s_keywords():
    """``bitprune_model`` hands its options to either Keras as one record; its fields and
    defaults are ``bitprune_apply``'s keyword arguments (so both Kerases default alike)."""
    import dataclasses
    import inspect

    from tf_bitpruning.options import BitPruneOptions
    keywords = {name: p.default for name, p in inspect.signature(tfbp.bitprune_apply).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert {f.name: f.default for f in dataclasses.fields(BitPruneOptions)} == keywords


def test_bitprune_model_names_unknown_options():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(TypeError, match=r"bitprune_model: unexpected options \['wieght_bits'\]"):
        tfbp.bitprune_model(model, wieght_bits=(2, 4))
