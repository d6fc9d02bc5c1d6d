"""The registry (layer class -> config), the scheme tfmot consumes, and the cost
weightings on their own (no training)."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
import tensorflow_model_optimization as tfmot

import tf_bitpruning as tfbp
from tf_bitpruning import costs
from tf_bitpruning.quantizers import ActivationBitQuantizer, WeightBitQuantizer
from tf_bitpruning.scheme import BitPruneQuantizeRegistry

L = keras.layers


def _config(layer, **registry_options):
    return BitPruneQuantizeRegistry(**registry_options).get_quantize_config(layer)


# Layers are made inside the test: made at collection they would take Keras' names
# ("conv2d", "dense") from the models of later tests.
@pytest.mark.parametrize("make, attr, per_channel_scale, axes", [
    (lambda: L.Dense(4), "kernel", False, (-1,)),                      # one scale per tensor
    (lambda: L.Conv2D(4, 3), "kernel", True, (-1,)),                   # one per output channel
    (lambda: L.DepthwiseConv2D(3), "depthwise_kernel", True, (2, 3)),  # channel x multiplier
])
def test_kernel_layers(make, attr, per_channel_scale, axes):
    config = _config(make())
    assert list(config.weight_quantizers) == [attr]
    q = config.weight_quantizers[attr]
    assert (q.per_channel_scale, q.channel_axes) == (per_channel_scale, axes)
    assert config.activation_attrs == ["activation"] and not config.quantize_output


def test_separable_conv_has_two_kernels():
    config = _config(L.SeparableConv2D(4, 3))
    assert list(config.weight_quantizers) == ["depthwise_kernel", "pointwise_kernel"]
    assert config.weight_quantizers["depthwise_kernel"].channel_axes == (2, 3)
    assert config.weight_quantizers["depthwise_kernel"] is not config.weight_quantizers["pointwise_kernel"]


def _xception_block(sequential=False):
    """Xception's SeparableConv2D -> BN -> ReLU, twice (the second with a depth multiplier,
    a bias and a fused relu), a Dense head."""
    if sequential:
        return keras.Sequential([keras.Input((8, 8, 3)), L.SeparableConv2D(8, 3, use_bias=False, name="sep"),
                                 L.BatchNormalization(name="sep_bn"), L.ReLU(name="sep_act"),
                                 L.GlobalAveragePooling2D(name="gap"), L.Dense(10, name="head")])
    inputs = keras.Input((8, 8, 3))
    x = L.SeparableConv2D(8, 3, padding="same", use_bias=False, name="block1_sepconv1")(inputs)
    x = L.ReLU(name="block1_sepconv1_act")(L.BatchNormalization(name="block1_sepconv1_bn")(x))
    x = L.SeparableConv2D(16, 3, strides=2, depth_multiplier=2, activation="relu", name="block1_sepconv2")(x)
    return keras.Model(inputs, L.Dense(10, name="head")(L.GlobalAveragePooling2D(name="gap")(x)))


def test_separable_conv2d_splits_into_depthwise_and_pointwise():
    """A SeparableConv2D runs as <name>_depthwise -> <name>_pointwise (tfmot's 8-bit scheme
    does the same), so the tensor between its kernels has a learned grid: the depthwise
    output quantizer. The pointwise conv has the bias and activation, and the BN after it
    folds into it (no output quantizer of its own). Weights are copied exactly."""
    model = _xception_block()
    bp = tfbp.bitprune_model(model, init_bits=8.0)
    layers = {layer.name: layer for layer in bp.layers}
    for name in ("block1_sepconv1", "block1_sepconv2"):
        assert f"quant_{name}" not in layers
        wrappers = layers[f"quant_{name}_depthwise"], layers[f"quant_{name}_pointwise"]
        depthwise, pointwise = (wrapper.layer for wrapper in wrappers)
        assert isinstance(depthwise, L.DepthwiseConv2D) and type(pointwise) is L.Conv2D
        sep = model.get_layer(name)
        # The wrappers hold the inner layers' variables (tfmot: quantizer variables are the wrapper's).
        values = {w.name: w.numpy() for wrapper in wrappers for w in wrapper.weights}
        copied = {"depthwise_kernel": f"{name}_depthwise/depthwise_kernel:0",
                  "pointwise_kernel": f"{name}_pointwise/kernel:0", "bias": f"{name}_pointwise/bias:0"}
        assert len(sep.weights) == 2 + sep.use_bias
        for w in sep.weights:
            np.testing.assert_array_equal(values[copied[w.name.split("/")[-1][:-2]]], w.numpy())
        assert (depthwise.strides, depthwise.padding, depthwise.depth_multiplier, depthwise.use_bias) == (
            sep.strides, sep.padding, sep.depth_multiplier, False)
        assert pointwise.kernel_size == (1, 1) and pointwise.use_bias == sep.use_bias
        activation = getattr(pointwise.activation, "activation", pointwise.activation)  # tfmot's wrapping
        assert activation.__name__ == sep.activation.__name__
    assert sorted(tfbp.bitlengths(bp)) == sorted([
        "quantize_layer/activations",
        "block1_sepconv1_depthwise/weights", "block1_sepconv1_depthwise/activations",  # the inner grid
        "block1_sepconv1_pointwise/weights",  # its BN folds in: the ReLU's grid is its output's
        "block1_sepconv1_act/activations",
        "block1_sepconv2_depthwise/weights", "block1_sepconv2_depthwise/activations",
        "block1_sepconv2_pointwise/weights", "block1_sepconv2_pointwise/activations",  # fused relu
        "gap/activations", "head/weights", "head/activations"])
    # The same function before training, up to 8-bit rounding.
    x = np.random.RandomState(0).rand(16, 8, 8, 3).astype(np.float32)
    ref = model(x).numpy()
    assert np.abs(bp(x).numpy() - ref).max() <= 0.05 * np.ptp(ref)


def test_separable_conv2d_split_in_a_sequential_model():
    model = _xception_block(sequential=True)
    bp = tfbp.bitprune_model(model)
    assert [layer.name for layer in bp.layers][:3] == ["quantize_layer", "quant_sep_depthwise", "quant_sep_pointwise"]


def test_separable_conv2d_of_the_user_or_skipped_stays_whole():
    """A layer annotated with its own config, or left float, is not split; a split part's
    name that is taken gets a suffix."""
    model = _xception_block()
    skipped = tfbp.bitprune_model(model, skip_layers=["block1_sepconv2"])
    names = [layer.name for layer in skipped.layers]
    assert "quant_block1_sepconv1_depthwise" in names and not any("block1_sepconv2_" in n for n in names)
    # Float kernels (tfmot quantizes the output of a float layer that feeds a quantized one).
    assert {n for n in tfbp.bitlengths(skipped) if n.startswith("block1_sepconv2")} <= {"block1_sepconv2/activations"}

    own = tfbp.BitPruneQuantizeConfig(["depthwise_kernel", "pointwise_kernel"], ["activation"])

    def annotate(layer):
        if layer.name == "block1_sepconv1":
            return tfbp.bitprune_annotate_layer(layer, own)
        return layer

    with tfbp.bitprune_scope():
        annotated = tfbp.bitprune_annotate_model(keras.models.clone_model(model, clone_function=annotate))
    bp = tfbp.bitprune_apply(annotated)
    names = [layer.name for layer in bp.layers]
    assert "quant_block1_sepconv1" in names and "quant_block1_sepconv2_depthwise" in names
    assert {"block1_sepconv1/depthwise_kernel", "block1_sepconv1/pointwise_kernel"} <= set(tfbp.bitlengths(bp))

    inputs = keras.Input((8, 8, 3))
    x = L.Conv2D(3, 1, name="sep_depthwise")(inputs)
    model = keras.Model(inputs, L.SeparableConv2D(4, 3, name="sep")(x))
    names = [layer.name for layer in tfbp.bitprune_model(model).layers]
    assert names[-2:] == ["quant_sep_depthwise_1", "quant_sep_pointwise"], names


def test_templates_reach_every_quantizer():
    config = _config(L.Conv2D(4, 3), weight_quantizer=WeightBitQuantizer(max_bits=6, bits_lr_multiplier=5.0),
                     activation_quantizer=ActivationBitQuantizer(init_bits=4.0))
    q = config.weight_quantizers["kernel"]
    assert (q.max_bits, q.bits_lr_multiplier, q.per_channel_scale) == (6, 5.0, True)
    assert config.activation_quantizer.init_bits == 4.0


def test_output_and_pass_through_layers():
    relu = _config(L.ReLU())
    assert relu.quantize_output and not relu.weight_quantizers and not relu.activation_attrs
    assert _config(L.Add()).quantize_output
    flatten = _config(L.Flatten())
    assert not flatten.quantize_output and not flatten.weight_quantizers and not flatten.activation_attrs
    no_output = BitPruneQuantizeRegistry().get_quantize_config(L.Dense(4), quantize_outputs=False)
    assert list(no_output.weight_quantizers) == ["kernel"] and not no_output.activation_attrs


def test_unsupported_layers_and_activations_are_named():
    class Mystery(L.Layer):
        pass

    def my_activation(x):
        return x

    registry = BitPruneQuantizeRegistry()
    assert "Mystery" in registry.unsupported_reason(Mystery())
    with pytest.raises(ValueError, match="Layer 'riddle': .*Mystery"):
        registry.get_quantize_config(Mystery(name="riddle"))
    assert "my_activation" in registry.unsupported_reason(L.Dense(2, activation=my_activation))
    assert registry.supports(L.Dense(2, activation="relu"))


def test_scheme_is_what_tfmot_applies():
    scheme = tfbp.BitPruneQuantizeScheme(WeightBitQuantizer(max_bits=6))
    assert isinstance(scheme, tfmot.quantization.keras.QuantizeScheme)
    assert scheme.get_quantize_registry().get_quantize_config(L.Dense(2)).weight_quantizers["kernel"].max_bits == 6
    model = keras.Sequential([keras.Input((4,)), L.Dense(3, activation="relu", name="d"), L.Dense(2, name="out")])
    with tfbp.bitprune_scope():
        q = tfmot.quantization.keras.quantize_apply(tfmot.quantization.keras.quantize_annotate_model(model), scheme)
    names = [t.name for t in costs.quantized_tensors(q)]
    assert names == ["quantize_layer/activations", "d/weights", "d/activations", "out/weights", "out/activations"]
    assert [t.quantizer.max_bits for t in costs.quantized_tensors(q) if t.kind == "weights"] == [6, 6]


# -- costs: the weightings of the average bitlength -------------------------------------------

def _fake(name, kind, bits, elements, macs=0, source=None):
    """A QuantizedTensor stand-in whose bitlength is a constant (n = k * param)."""
    q = WeightBitQuantizer() if kind == "weights" else ActivationBitQuantizer()
    variables = {"bits": tf.Variable(bits / q.bits_lr_multiplier)}
    return costs.QuantizedTensor(name, name.split("/")[0], kind, q, variables, elements, macs, source)


def test_weightings_by_hand():
    a_in = _fake("in/activations", "activations", 8.0, 64)
    w1 = _fake("c/weights", "weights", 2.0, 100, macs=1000, source=a_in)
    a1 = _fake("c/activations", "activations", 4.0, 32)
    w2 = _fake("d/weights", "weights", 6.0, 300, macs=300, source=a1)
    tensors = [a_in, w1, a1, w2]

    def avg(weighting, kind=None):
        return float(costs.average_bits_tensor(tensors, weighting, kind))

    assert avg("uniform") == pytest.approx((8 + 2 + 4 + 6) / 4)
    assert avg("uniform", "weights") == pytest.approx(4.0)
    assert avg("memory") == pytest.approx((64 * 8 + 100 * 2 + 32 * 4 + 300 * 6) / 496)
    assert avg("memory", "activations") == pytest.approx((64 * 8 + 32 * 4) / 96)
    # bops: sqrt(sum MACs n_w n_in / sum MACs); a model at b bits everywhere scores b.
    assert avg("bops") == pytest.approx(np.sqrt((1000 * 2 * 8 + 300 * 6 * 4) / 1300))
    w_float_input = _fake("e/weights", "weights", 4.0, 10, macs=10)  # a float input counts 32 bits
    assert float(costs.average_bits_tensor([w_float_input], "bops")) == pytest.approx(np.sqrt(4 * 32))
    for t in tensors:
        t.bits_variable.assign(5.0 / t.quantizer.bits_lr_multiplier)
    assert [avg(w) for w in costs.WEIGHTINGS] == pytest.approx([5.0] * 3)


def test_weighting_errors():
    a = _fake("x/activations", "activations", 8.0, 4)
    with pytest.raises(ValueError, match="Unknown weighting 'energy'"):
        costs.average_bits_tensor([a], "energy")
    with pytest.raises(ValueError, match="kind must be one of"):
        costs.average_bits_tensor([a], "uniform", "bias")
    with pytest.raises(ValueError, match="needs at least one quantized kernel"):
        costs.average_bits_tensor([a], "bops")
    with pytest.raises(ValueError, match="no quantized weights"):
        costs.average_bits_tensor([a], "uniform", "weights")
