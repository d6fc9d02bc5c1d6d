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
