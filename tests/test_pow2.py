"""grid="pow2": power-of-two steps that fixed-point types hold exactly; the default
grid is unchanged."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tf_bitpruning as tfbp
from tf_bitpruning import costs, quant_ops
from tf_bitpruning.quantizers import ActivationBitQuantizer, WeightBitQuantizer


def _is_pow2(x):
    m, _ = np.frexp(np.asarray(x, np.float64))
    return np.all(m == 0.5)


def test_pow2_ceil_is_exact_at_and_around_powers_of_two():
    e = np.arange(-20, 10, dtype=np.float32)
    p = 2.0 ** e
    np.testing.assert_array_equal(quant_ops.pow2_ceil(tf.constant(p)).numpy(), p)
    np.testing.assert_array_equal(quant_ops.pow2_ceil(tf.constant(p * 1.0000002)).numpy(), 2 * p)
    np.testing.assert_array_equal(quant_ops.pow2_ceil(tf.constant(p * 0.75)).numpy(), p)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("axes", [None, [0]])
def test_pow2_weight_grid_holds_every_code_exactly(bits, axes):
    w = tf.random.stateless_normal((64, 16), seed=(1, bits)) * 0.3
    q = quant_ops.quantize_weights_int(w, bits, axes, grid="pow2").numpy()
    s = quant_ops.weight_scale(w, bits, axes, grid="pow2").numpy()
    assert _is_pow2(s)
    levels = 2 ** (bits - 1) - 1
    codes = q / s
    np.testing.assert_array_equal(codes, np.round(codes))  # exactly on the grid
    assert np.abs(codes).max() <= levels
    # The step covers max|w| (rounded up, less than twice the min-max step) and w/s rounds half to even.
    top = np.abs(w.numpy()).max(axis=None if axes is None else 0, keepdims=axes is not None)
    minmax = top / levels
    assert np.all(s >= minmax * (1 - 1e-6)) and np.all(s < 2 * minmax)
    np.testing.assert_array_equal(codes, np.clip(np.round(w.numpy() / s), -levels, levels))
    assert quant_ops.quantize_weights_int(w, bits, axes).numpy().tolist() != q.tolist()  # default differs


def test_pow2_ties_round_half_to_even():
    w = tf.constant([0.75, 0.25, -0.25, 0.5, -0.75])  # max 0.75 at 3 bits: step 0.25 -> codes ±3, ±1
    np.testing.assert_array_equal(quant_ops.quantize_weights_int(w, 3, grid="pow2").numpy(), w.numpy())
    x = tf.constant([0.125, 0.375, 0.625, -0.125, 1.9])
    q = quant_ops.quantize_activations_int(x, tf.constant(0.0), tf.constant(0.75), 2, grid="pow2").numpy()
    np.testing.assert_array_equal(q, [0.0, 0.5, 0.5, 0.0, 0.75])  # step 0.25: ties to even codes; saturates


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("rng", [(0.0, 3.0), (-1.0, 3.0), (-2.5, 0.4), (0.0, 0.01)])
def test_pow2_activation_grid_is_a_fixed_point_type(bits, rng):
    lo_r, hi_r = (tf.constant(v) for v in rng)
    x = tf.random.stateless_uniform((2000,), seed=(3, bits), minval=rng[0] * 1.5 - 0.1, maxval=rng[1] * 1.5)
    q = quant_ops.quantize_activations_int(x, lo_r, hi_r, bits, grid="pow2").numpy()
    lo, step, zp = (float(v) for v in quant_ops.activation_grid(lo_r, hi_r, bits, grid="pow2"))
    assert _is_pow2(step)
    signed = rng[0] < 0
    assert zp == (2 ** (bits - 1) if signed else 0)  # ufixed<b, I> or fixed<b, I>
    codes = q / step
    np.testing.assert_array_equal(codes, np.round(codes))
    assert codes.min() >= -zp and codes.max() <= 2 ** bits - 1 - zp
    # The range is inside the grid (to the largest code the signed type has at b bits).
    top = (2 ** bits - 1 - zp) * step
    assert lo <= rng[0] and (top >= rng[1] or (signed and bits == 1))
    expected = np.clip(np.round(x.numpy() / step), -zp, 2 ** bits - 1 - zp) * step  # a fixed-point cast
    np.testing.assert_array_equal(q, expected)


@pytest.mark.parametrize("kind", ["weights", "activations"])
def test_pow2_gradient_wrt_bits_is_the_difference_of_neighbours(kind):
    x = tf.random.stateless_normal((300,), seed=(7, 8))
    if kind == "weights":
        fn = lambda b: quant_ops.quantize_weights_int(x, b, grid="pow2")  # noqa: E731
    else:
        fn = lambda b: quant_ops.quantize_activations_int(x, tf.constant(-1.0), tf.constant(2.0), b,  # noqa: E731
                                                          grid="pow2")
    n = tf.Variable(3.4)
    with tf.GradientTape() as tape:
        y = quant_ops.blend(x, fn, n, 2, 8)
    jac = tape.jacobian(y, n).numpy()
    np.testing.assert_allclose(jac, (fn(4.0) - fn(3.0)).numpy(), atol=1e-6)
    assert np.abs(jac).sum() > 0


def test_grid_option_config_and_errors():
    for cls in (WeightBitQuantizer, ActivationBitQuantizer):
        assert "grid" not in cls().get_config()  # the default config is what it was
        q = cls(init_bits=3, grid="pow2")
        assert q.get_config()["grid"] == "pow2" and cls.from_config(q.get_config()) == q
        with pytest.raises(ValueError, match="grid"):
            cls(grid="log")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(ValueError, match="grid"):
        tfbp.bitprune_model(model, grid="nope")


def _cnn(k=keras):
    L = k.layers
    return k.Sequential([k.Input((8, 8, 1)), L.Conv2D(4, 3, activation="relu"), L.Flatten(), L.Dense(3)])


def _check_pow2(model):
    tensors = costs.quantized_tensors(model)
    assert tensors
    for t in tensors:
        assert t.quantizer.grid == "pow2", t.name
        if t.kind == "weights":
            assert not t.quantizer.per_channel_scale  # one step (one fixed type) per layer
        if t.kind == "weights" and t.quantizer.frozen:
            b = float(np.round(np.asarray(t.quantizer.bitlength(t.variables))).max())
            s = quant_ops.weight_scale(t.weight, b, grid="pow2").numpy()
            q = t.quantizer(t.weight, False, t.variables).numpy()
            np.testing.assert_array_equal(q / s, np.round(q / s))


@pytest.mark.parametrize("which", ["tf_keras", "keras3"])
def test_pow2_model_trains_freezes_saves_and_loads(which, tmp_path):
    if which == "keras3":
        import keras as k
    else:
        k = keras
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1, (64, 8, 8, 1)).astype("float32"), rng.integers(0, 3, 64)
    bp = tfbp.bitprune_model(_cnn(k), grid="pow2", init_bits=4.5)
    _check_pow2(bp)
    bp.compile(k.optimizers.Adam(1e-3), k.losses.SparseCategoricalCrossentropy(from_logits=True))
    bp.fit(x, y, epochs=1, batch_size=32, verbose=0)
    frozen = tfbp.freeze_bitlengths(bp)
    _check_pow2(frozen)
    assert all(t.quantizer.frozen for t in costs.quantized_tensors(frozen))
    out = frozen.predict(x, verbose=0)
    path = str(tmp_path / ("m.h5" if which == "tf_keras" else "m.keras"))
    tfbp.save_model(frozen, path)
    loaded = tfbp.load_model(path)
    _check_pow2(loaded)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), out)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("axes", [None, [0]])
def test_pow2_mse_step_is_a_power_of_two_never_worse_than_rounding_up(bits, axes):
    w = tf.random.stateless_normal((64, 16), seed=(5, bits)) * 0.3
    levels = 2 ** (bits - 1) - 1
    up = quant_ops.weight_scale(w, bits, axes, grid="pow2").numpy()
    clip = quant_ops.pow2_mse_clip(w, bits, axes)
    s = quant_ops.weight_scale(w, bits, axes, clip, grid="pow2").numpy()
    assert _is_pow2(s)
    np.testing.assert_array_equal(s, clip.numpy() / levels)  # the clip is the step's top level, exactly
    assert np.all(s <= up) and np.all(s >= up / 8)  # rounded down at most 3 times
    q = quant_ops.quantize_weights_int(w, bits, axes, w_max=clip, grid="pow2").numpy()
    np.testing.assert_array_equal(q, s * np.clip(np.round(w.numpy() / s), -levels, levels))  # saturates
    q_up = quant_ops.quantize_weights_int(w, bits, axes, grid="pow2").numpy()
    red = None if axes is None else 0
    err, err_up = (np.square(v - w.numpy()).sum(axis=red) for v in (q, q_up))
    assert np.all(err <= err_up)
    if bits <= 3:  # normal weights: a step rounded up to >= max|w| / levels zeroes too many (in total;
        assert err.sum() < 0.7 * err_up.sum()  # a channel whose max|w| / levels is just under 2^k can tie)


def test_pow2_mse_clip_keeps_2bit_kernels_alive():
    """The digits seed-1 collapse: a ternary pow2 kernel whose step rounds up to ~2·max|w|
    sets nearly every weight to 0; the least-error power-of-two step keeps most of them."""
    w = tf.constant(np.linspace(-0.51, 0.51, 103, dtype=np.float32))  # max|w| 0.51: step rounds up to 1
    up = WeightBitQuantizer(init_bits=2, max_bits=2, grid="pow2", frozen=True)
    mse = WeightBitQuantizer(init_bits=2, max_bits=2, grid="pow2", frozen=True, clip="mse")
    levels = quant_ops.weight_levels(2)
    nonzero = [np.count_nonzero(quant_ops.quantize_weights_levels(w, levels, q.clip_value(w, 2), "pow2").numpy())
               for q in (up, mse)]
    assert nonzero[0] <= 2 and nonzero[1] > 40, nonzero
