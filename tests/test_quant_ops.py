"""The quantizer math, to the last bit."""

import numpy as np
import pytest
import tensorflow as tf

from tf_bitpruning import quant_ops


def _weights_fn(w, reduce_axes=None):
    return lambda b: quant_ops.quantize_weights_int(w, b, reduce_axes)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_weight_grid_has_at_most_2b_minus_1_values(bits):
    w = tf.random.stateless_normal((64, 32), seed=(1, 2))
    q = quant_ops.quantize_weights_int(w, bits).numpy()
    s = np.abs(w.numpy()).max() / (2 ** (bits - 1) - 1)
    assert len(np.unique(q)) <= 2 ** bits - 1
    np.testing.assert_allclose(q / s, np.round(q / s), atol=1e-4)  # on the grid
    assert np.abs(q).max() == pytest.approx(np.abs(w.numpy()).max(), rel=1e-6)  # max is representable


def test_two_bits_is_ternary():
    w = tf.constant([-1.0, -0.4, -0.2, 0.0, 0.3, 0.9])
    q = quant_ops.quantize_weights_int(w, 2).numpy()
    np.testing.assert_allclose(q, [-1.0, 0.0, 0.0, 0.0, 0.0, 1.0])


def test_per_channel_scale():
    w = tf.constant([[1.0, 10.0], [0.5, -4.0], [0.26, 2.4]])
    q = quant_ops.quantize_weights_int(w, 3, reduce_axes=[0]).numpy()  # levels ±3 per column
    np.testing.assert_allclose(q[:, 0], [1.0, 2 / 3, 1 / 3], rtol=1e-6)
    np.testing.assert_allclose(q[:, 1], [10.0, -10 / 3, 10 / 3], rtol=1e-6)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_activation_grid(bits):
    x = tf.random.stateless_uniform((1000,), seed=(3, 4), minval=-1.3, maxval=4.1)
    q = quant_ops.quantize_activations_int(x, tf.constant(-1.0), tf.constant(3.0), bits).numpy()
    assert len(np.unique(q)) <= 2 ** bits
    lo, step, zp = quant_ops.activation_grid(tf.constant(-1.0), tf.constant(3.0), bits)
    assert float(lo + step * zp) == pytest.approx(0.0, abs=1e-6)  # zero is exact
    assert q.min() >= float(lo) - 1e-6 and q.max() <= float(lo + step * (2 ** bits - 1)) + 1e-6


@pytest.mark.parametrize("n", [2.0, 3.0, 5.0, 8.0])
def test_blend_at_integer_bits_equals_integer_quantizer(n):
    w = tf.random.stateless_normal((50,), seed=(5, 6))
    fn = _weights_fn(w)
    got = quant_ops.blend(w, fn, tf.constant(n), 2, 8).numpy()
    np.testing.assert_allclose(got, fn(n).numpy(), atol=1e-6)


def test_gradient_wrt_bits_is_difference_of_neighbours():
    w = tf.random.stateless_normal((200,), seed=(7, 8))
    n = tf.Variable(4.3)
    with tf.GradientTape() as tape:
        y = quant_ops.blend(w, _weights_fn(w), n, 2, 8)
    jac = tape.jacobian(y, n).numpy()
    expected = (quant_ops.quantize_weights_int(w, 5) - quant_ops.quantize_weights_int(w, 4)).numpy()
    np.testing.assert_allclose(jac, expected, atol=1e-6)
    # and the value interpolates linearly
    np.testing.assert_allclose(y.numpy(), quant_ops.quantize_weights_int(w, 4).numpy() + 0.3 * expected, atol=1e-5)


def test_straight_through_gradient_for_weights():
    w = tf.Variable(tf.random.stateless_normal((30,), seed=(9, 9)))
    with tf.GradientTape() as tape:
        y = quant_ops.blend(w, _weights_fn(w), tf.constant(3.6), 2, 8)
        loss = tf.reduce_sum(y * tf.range(30, dtype=tf.float32))
    np.testing.assert_allclose(tape.gradient(loss, w).numpy(), np.arange(30), atol=1e-6)


def test_ste_round():
    x = tf.Variable([0.2, 1.7, -2.4])
    with tf.GradientTape() as tape:
        y = quant_ops.ste_round(x)
    np.testing.assert_array_equal(y.numpy(), [0.0, 2.0, -2.0])
    np.testing.assert_array_equal(tape.gradient(y, x).numpy(), [1.0, 1.0, 1.0])


def test_fixed_has_no_gradient_to_bits():
    w = tf.random.stateless_normal((20,), seed=(1, 1))
    n = tf.Variable(3.0)
    with tf.GradientTape() as tape:
        y = quant_ops.fixed(w, _weights_fn(w), n)
    np.testing.assert_allclose(y.numpy(), quant_ops.quantize_weights_int(w, 3).numpy())
    assert tape.gradient(y, n) is None
