"""The quantizers on their own (no model, no training): the bitlength variable and its
reparametrization, the activation range updates, configs that survive a
get_config/from_config round trip, and clear errors."""

import json

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tf_bitpruning import quant_ops, shared_graph
from tf_bitpruning.configs import BitPruneQuantizeConfig
from tf_bitpruning.quantizers import ActivationBitQuantizer, WeightBitQuantizer


def _built(quantizer, shape=(3, 4), name="kernel"):
    """``quantizer.build`` on a bare layer: returns its variables."""
    return quantizer.build(tf.TensorShape(shape), name, keras.layers.Layer())


def test_bitlength_variable_stores_n_over_the_multiplier():
    q = WeightBitQuantizer(init_bits=6.0, bits_lr_multiplier=10.0)
    variables = _built(q)
    assert variables["bits"].name.endswith("kernel_bits:0") and variables["bits"].trainable
    assert float(variables["bits"]) == pytest.approx(0.6)
    assert float(q.bitlength(variables)) == pytest.approx(6.0)


def test_one_step_moves_n_by_the_multiplier_times_a_weight_step():
    """dn/dparam reaches the parameter unscaled (1), so an SGD step of lr moves the
    parameter by lr and n = k * param by k * lr."""
    q = WeightBitQuantizer(init_bits=6.0, bits_lr_multiplier=10.0)
    variables = _built(q)
    with tf.GradientTape() as tape:
        n = q.bitlength(variables)
    assert float(tape.gradient(n, variables["bits"])) == pytest.approx(1.0)
    keras.optimizers.SGD(0.01).apply_gradients([(tf.constant(1.0), variables["bits"])])
    assert float(q.bitlength(variables)) == pytest.approx(6.0 - 10.0 * 0.01, abs=1e-5)


def test_bitlength_stays_in_range():
    q = WeightBitQuantizer(min_bits=3, max_bits=6, bits_lr_multiplier=4.0)
    variables = _built(q)
    constraint = variables["bits"].constraint
    assert float(constraint(tf.constant(5.0))) == pytest.approx(6 / 4)   # the parameter is clipped
    assert float(constraint(tf.constant(-1.0))) == pytest.approx(3 / 4)
    variables["bits"].assign(10.0)  # past the constraint (before it runs): n still clipped
    assert float(q.bitlength(variables)) == 6.0


def test_frozen_bitlength_is_an_integer_and_not_trainable():
    q = WeightBitQuantizer(bits_lr_multiplier=10.0, frozen=True)
    variables = _built(q)
    assert not variables["bits"].trainable
    variables["bits"].assign(0.46)
    assert float(q.bitlength(variables)) == 5.0  # round(4.6)
    w = tf.random.stateless_normal((3, 4), seed=(1, 2))
    np.testing.assert_array_equal(q(w, True, variables).numpy(), quant_ops.quantize_weights_int(w, 5).numpy())


@pytest.mark.parametrize("options, shape, bits_shape", [
    ({}, (3, 3, 1, 16), ()),
    ({"per_channel_bits": True}, (3, 3, 1, 16), (1, 1, 1, 16)),
    ({"per_channel_bits": True, "channel_axes": (2, 3)}, (3, 3, 8, 2), (1, 1, 8, 2)),  # depthwise
])
def test_bitlength_shape(options, shape, bits_shape):
    assert _built(WeightBitQuantizer(**options), shape)["bits"].shape == bits_shape


def test_per_channel_scale_quantizes_each_output_channel_on_its_own_grid():
    q = WeightBitQuantizer(init_bits=3.0, per_channel_scale=True)
    w = tf.constant([[1.0, 10.0], [0.5, -4.0], [0.26, 2.4]])
    got = q(w, True, _built(q, (3, 2))).numpy()
    np.testing.assert_allclose(got, quant_ops.quantize_weights_int(w, 3, reduce_axes=[0]).numpy(), rtol=1e-6)
    assert np.abs(got[:, 0]).max() == pytest.approx(1.0) and np.abs(got[:, 1]).max() == pytest.approx(10.0)


def test_activation_range_expands_at_once_and_shrinks_at_the_ema_rate():
    """range_update="expand" takes in a batch beyond the range at once: values outside get
    no gradient, so a range that lagged would cap how fast activations grow (VGG16 stays
    at chance with tfmot's moving average, docs/concepts.md)."""
    q = ActivationBitQuantizer(init_bits=8.0, ema_decay=0.9, range_update="expand")
    variables = _built(q, (None, 4), "post_activation")
    q(tf.constant([[-1.0, 0.5, 2.0, 3.0]]), True, variables)
    assert (float(variables["min"]), float(variables["max"])) == (-1.0, 3.0)
    q(tf.constant([[0.5, 1.0, 4.0, 13.0]]), True, variables)
    assert float(variables["max"]) == 13.0  # at once, not 0.9 * 3 + 0.1 * 13
    assert float(variables["min"]) == pytest.approx(-0.9)  # batch min 0 (kept representable): shrinks
    q(tf.constant([[-3.0, 1.0]]), True, variables)
    assert (float(variables["min"]), float(variables["max"])) == pytest.approx((-3.0, 0.9 * 13.0 + 0.1 * 1.0))
    assert q.get_config()["range_update"] == "expand"


def test_activation_range_starts_at_the_first_batch_then_follows_the_ema():
    q = ActivationBitQuantizer(init_bits=8.0, ema_decay=0.9)
    assert q.range_update == "ema"  # the default, tfmot's
    variables = _built(q, (None, 4), "post_activation")
    assert variables["bits"].trainable and not variables["min"].trainable and not variables["max"].trainable
    first = tf.constant([[-1.0, 0.5, 2.0, 3.0]])
    # Before any training step the range is empty: values pass through.
    np.testing.assert_array_equal(q(first, False, variables).numpy(), first.numpy())
    q(first, True, variables)
    assert (float(variables["min"]), float(variables["max"])) == (-1.0, 3.0)
    q(tf.constant([[0.5, 1.0, 4.0, 13.0]]), True, variables)  # batch min clipped to 0: 0 stays representable
    assert float(variables["min"]) == pytest.approx(0.9 * -1.0 + 0.1 * 0.0)
    assert float(variables["max"]) == pytest.approx(0.9 * 3.0 + 0.1 * 13.0)
    q(tf.constant([[100.0]]), False, variables)  # inference never moves the range
    assert float(variables["max"]) == pytest.approx(4.0)


def test_frozen_range_does_not_move_and_output_is_on_the_grid():
    q = ActivationBitQuantizer(init_bits=3.0, freeze_range=True)
    variables = _built(q, (None, 64), "post_activation")
    variables["min"].assign(-1.0)
    variables["max"].assign(3.0)
    x = tf.random.stateless_uniform((1, 64), seed=(3, 4), minval=-2.0, maxval=5.0)
    got = q(x, True, variables).numpy()
    assert (float(variables["min"]), float(variables["max"])) == (-1.0, 3.0)
    np.testing.assert_allclose(got, quant_ops.quantize_activations_int(x, -1.0, 3.0, 3).numpy(), atol=1e-6)
    assert len(np.unique(got)) <= 2 ** 3


@pytest.mark.parametrize("quantizer", [
    WeightBitQuantizer(min_bits=3, max_bits=6, init_bits=4.5, bits_lr_multiplier=5.0, per_channel_scale=True,
                       per_channel_bits=True, channel_axes=(2, 3), frozen=True),
    ActivationBitQuantizer(min_bits=2, max_bits=7, init_bits=3.0, ema_decay=0.5, freeze_range=True,
                           range_update="expand"),
])
def test_quantizer_config_round_trip(quantizer):
    config = quantizer.get_config()
    json.dumps(config)  # SavedModel and h5 store it as JSON
    clone = type(quantizer).from_config(config)
    assert clone == quantizer and clone.get_config() == config
    assert type(quantizer).from_config(dict(config, init_bits=5.0)) != quantizer


def test_bit_prune_config_round_trip():
    config = BitPruneQuantizeConfig(
        ["depthwise_kernel", "pointwise_kernel"], ["activation"],
        weight_quantizer={"depthwise_kernel": WeightBitQuantizer(channel_axes=(2, 3)),
                          "pointwise_kernel": WeightBitQuantizer(max_bits=6)},
        activation_quantizer=ActivationBitQuantizer(init_bits=4.0))
    as_json = json.loads(json.dumps(config.get_config()))
    clone = BitPruneQuantizeConfig.from_config(as_json)
    assert clone == config
    assert clone.weight_quantizers["pointwise_kernel"].max_bits == 6
    assert clone.weight_quantizers["depthwise_kernel"].channel_axes == (2, 3)
    assert clone.activation_quantizer.init_bits == 4.0
    assert clone.replace(quantize_output=True) != config and clone.replace() == config


def test_config_errors_name_the_layer_and_attribute():
    with pytest.raises(ValueError, match=r"no weight quantizer for \['bias'\]"):
        BitPruneQuantizeConfig(["kernel", "bias"], weight_quantizer={"kernel": WeightBitQuantizer()})
    config = BitPruneQuantizeConfig(["kernel"], ["activation"])
    layer = keras.layers.ReLU(name="my_relu")
    with pytest.raises(AttributeError, match="'my_relu' \\(ReLU\\) has no attribute 'kernel'"):
        config.get_weights_and_quantizers(layer)
    with pytest.raises(ValueError, match="'my_relu': expected 1 quantized weights, got 2"):
        config.set_quantize_weights(layer, [1, 2])


@pytest.mark.parametrize("make, match", [
    (lambda: WeightBitQuantizer(min_bits=1), "min_bits must be >= 2"),
    (lambda: WeightBitQuantizer(min_bits=6, max_bits=4), "min_bits=6, max_bits=4"),
    (lambda: WeightBitQuantizer(max_bits=17), "max_bits <= 16"),
    (lambda: WeightBitQuantizer(init_bits=9.0), "init_bits=9.0 is outside"),
    (lambda: ActivationBitQuantizer(bits_lr_multiplier=0.0), "bits_lr_multiplier must be > 0"),
    (lambda: ActivationBitQuantizer(ema_decay=1.0), r"ema_decay must be in \[0, 1\)"),
    (lambda: ActivationBitQuantizer(range_update="max"), r"range_update \(bitprune_model's activation_range\) must be one of \('expand', 'ema', 'learned'\), got 'max'"),
])
def test_invalid_quantizer_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_traced_quantizers_add_a_few_call_ops_each_and_share_constants():
    """Time to first step (docs/startup_time.md): in a traced function each quantizer call's
    math is a few calls of shared tf.functions (the bitlength, the grids, an activation's
    range update), and the scalar constants are one Const per graph."""
    wq, aq = WeightBitQuantizer(), ActivationBitQuantizer()
    layer = keras.layers.Dense(4)
    layer.build((None, 3))
    ww, aw = wq.build((3, 4), "k", layer), aq.build((None, 4), "a", layer)
    kernel = tf.Variable(tf.ones((3, 4)))

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            y = tf.reduce_sum(aq(tf.matmul(x, wq(kernel, True, ww)), True, aw))
            y += tf.reduce_sum(aq(x, True, aw))
        assert shared_graph.const(2.0) is shared_graph.const(2.0)
        return tape.gradient(y, [kernel, ww["bits"], aw["bits"]])

    graph = step.get_concrete_function(tf.TensorSpec((None, 3), tf.float32)).graph
    calls = [op for op in graph.get_operations() if op.type in ("PartitionedCall", "StatefulPartitionedCall")]
    # 3 quantizer calls: forward, the bitlength and the grids (an activation also its batch range
    # and moving range), at most one gradient call each: between 2 and 8 per quantizer call.
    assert 3 * 2 <= len(calls) <= 3 * 8, [op.type for op in calls]
    math_ops = [op for op in graph.get_operations() if op.type in ("Round", "Floor", "ClipByValue", "Pow")]
    assert not math_ops, [op.name for op in math_ops]  # the math itself lives in the shared functions
    assert shared_graph.const(2.0) == 2.0  # eager: the Python scalar
    grads = step(tf.ones((2, 3)))
    assert all(g is not None for g in grads)
