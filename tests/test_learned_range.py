"""activation_range="learned": the activation range is trained by gradient (LSQ),
the forward pass is unchanged, and the learned range exports exactly."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tf_bitpruning as tfbp
from tf_bitpruning import costs, quant_learned, quant_ops
from tf_bitpruning.quantizers import ActivationBitQuantizer
from tests.support.models import small_cnn

X = np.array([-0.7, -0.2, 0.0, 0.13, 0.5, 0.74, 1.1, 1.6, 2.4, 3.0], np.float32)


def _lsq_dhigh(x, low, high, b):
    """∂Q(x; b)/∂high by LSQ's formula, summed over x: (round(t) - t) inside, the code minus
    the zero point where the grid clips, divided by 2^b - 1 (t = x/s + z)."""
    top = 2.0 ** b - 1
    s = (high - low) / top
    z = np.clip(np.round(-low / s), 0, top)
    t = x / s + z
    code = np.clip(np.round(t), 0, top)
    inside = (t >= 0) & (t <= top)
    return np.sum(np.where(inside, code - t, code - z)) / top


def _grads(n, frozen=False, low=-0.5, high=2.0, min_bits=1, max_bits=8):
    lo, hi = tf.Variable(low), tf.Variable(high)
    with tf.GradientTape() as tape:
        term = quant_learned.learned_range_term(tf.constant(X), lo, hi, tf.constant(n), min_bits, max_bits, frozen)
        total = tf.reduce_sum(term)
    assert float(tf.reduce_max(tf.abs(term))) == 0.0  # forward: exactly zero
    return [float(g) for g in tape.gradient(total, [lo, hi])]


@pytest.mark.parametrize("bits", [1, 2, 3])
def test_range_gradient_is_lsq_at_integer_bits(bits):
    g_low, g_high = _grads(float(bits), frozen=True)
    expected = _lsq_dhigh(X, -0.5, 2.0, bits)
    assert abs(g_high - expected) < 1e-4
    assert abs(g_low + expected) < 1e-4  # the step depends on high - low


def test_range_gradient_blends_the_two_grids():
    n = 2.3  # 0.7 of the 2-bit grid's gradient, 0.3 of the 3-bit one's
    _, g_high = _grads(n)
    expected = 0.7 * _lsq_dhigh(X, -0.5, 2.0, 2) + 0.3 * _lsq_dhigh(X, -0.5, 2.0, 3)
    assert abs(g_high - expected) < 1e-4


def test_relu_range_above_the_clip_gets_pacts_gradient_of_one():
    # low = 0: every x above high clips to the top code; ∂Q/∂high = 1 there (PACT).
    x = tf.constant([3.0, 4.0, 5.0])
    hi = tf.Variable(2.0)
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(quant_learned.learned_range_term(x, tf.constant(0.0), hi, tf.constant(2.0), 1, 8, True))
    assert abs(float(tape.gradient(total, hi)) - 3.0) < 1e-5


def test_quantizer_trains_its_range_and_computes_the_same_values():
    layer = keras.layers.Layer()
    learned = ActivationBitQuantizer(init_bits=2, range_update="learned")
    tracked = ActivationBitQuantizer(init_bits=2)
    v_learned, v_tracked = learned.build((10,), "a", layer), tracked.build((10,), "b", layer)
    assert v_learned["max"].trainable and not v_tracked["max"].trainable
    x = tf.constant(X)
    learned(x, True, v_learned)  # the first batch starts the range at its min/max
    assert float(v_learned["max"]) == pytest.approx(3.0) and float(v_learned["min"]) == pytest.approx(-0.7)
    v_learned["max"].assign(2.0)
    v_learned["min"].assign(-0.5)
    with tf.GradientTape() as tape:
        out = learned(x, True, v_learned)
        loss = tf.reduce_sum(out)
    g_max = float(tape.gradient(loss, v_learned["max"]))
    assert float(v_learned["max"]) == 2.0  # not moved by the forward pass
    expected = quant_ops.quantize_activations_int(x, tf.constant(-0.5), tf.constant(2.0), 2.0)
    np.testing.assert_array_equal(out.numpy(), expected.numpy())
    assert abs(g_max - _lsq_dhigh(X, -0.5, 2.0, 2)) < 1e-4


def test_learned_range_option_and_config():
    q = ActivationBitQuantizer(range_update="learned")
    assert ActivationBitQuantizer.from_config(q.get_config()) == q
    with pytest.raises(ValueError, match="grid='minmax'"):
        ActivationBitQuantizer(range_update="learned", grid="pow2")
    bp = tfbp.bitprune_model(small_cnn(), activation_range="learned")
    ranges = [v["max"] for t in costs.quantized_tensors(bp) if t.kind == "activations" for v in [t.variables]]
    assert ranges and all(r.trainable for r in ranges)


@pytest.mark.slow
def test_learned_ranges_and_clips_export_and_agree_with_litert(digits, tmp_path):
    from tests.support.litert_run import output_step, run_tflite
    from tests.support.tflite_checks import top1_agreement
    from tf_bitpruning.export import grids

    xtr, ytr, xte, _ = digits
    bp = tfbp.bitprune_model(small_cnn(), activation_range="learned", weight_clip="learned", init_bits=3)
    bp.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    bp.fit(xtr, ytr, epochs=3, batch_size=32, verbose=0)
    frozen = tfbp.freeze_bitlengths(bp)
    frozen.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    tensors = costs.quantized_tensors(frozen)
    start = {t.name: t.variables["max" if t.kind == "activations" else "clip"].numpy() for t in tensors}
    frozen.fit(xtr[:256], ytr[:256], epochs=1, verbose=0)
    moved = set()
    for t in tensors:
        if t.kind == "weights":
            # The exporter's b-bit kernel is the one Keras computes, on the learned clip's grid.
            assert not np.array_equal(t.variables["clip"].numpy(), start[t.name])  # still learned when frozen
            q = t.quantizer(t.weight, False, t.variables).numpy()
            exp = grids.weight_export(t.quantizer, t.variables, t.weight, t.name, None, None)
            np.testing.assert_allclose(exp.kernel, q, rtol=1e-6, atol=1e-7)
            assert np.abs(q).max() <= float(np.max(t.variables["clip"].numpy())) * (1 + 1e-6)
            continue
        if float(t.variables["max"]) != start[t.name]:  # still learned when frozen
            moved.add(t.name)
        # The exporter's grid is the learned range's: its top is the learned max (nudged as TFLite does).
        exp = grids.activation_export(t.quantizer, t.variables, t.name)
        lo, step, _ = quant_ops.activation_grid(t.variables["min"], t.variables["max"], float(exp.bits))
        assert exp.lo == pytest.approx(float(lo)) and exp.step == pytest.approx(float(step))
    assert moved
    path = str(tmp_path / "learned.tflite")
    tfbp.export_tflite(frozen, path, representative_dataset=xtr[:64])
    a = top1_agreement(run_tflite(path, xte), frozen.predict(xte, verbose=0), output_step(path))
    assert a.decided > 100 and a.rate >= 0.98, a


# weight_clip="learned": the symmetric weight grid's top is a variable trained by LSQ's gradient.

W = np.array([-0.9, -0.41, -0.05, 0.0, 0.12, 0.33, 0.5, 0.77, 1.3], np.float32)


def _lsq_dclip(w, c, b):
    """∂Q(w; b)/∂c by LSQ's formula, summed over w: (round(t) - t) inside, ±L where it clips, over L."""
    levels = 2.0 ** (b - 1) - 1
    t = w / (c / levels)
    code = np.clip(np.round(t), -levels, levels)
    return np.sum(np.where(np.abs(t) <= levels, code - t, code)) / levels


@pytest.mark.parametrize("n, frozen, mix", [(2.0, True, {2: 1.0}), (3.0, True, {3: 1.0}),
                                           (2.25, False, {2: 0.75, 3: 0.25})])
def test_weight_clip_gradient_is_lsq(n, frozen, mix):
    c = tf.Variable(0.6)
    with tf.GradientTape() as tape:
        term = quant_learned.learned_clip_term(tf.constant(W), c, tf.constant(n), 2, 8, frozen)
        total = tf.reduce_sum(term)
    assert float(tf.reduce_max(tf.abs(term))) == 0.0
    expected = sum(share * _lsq_dclip(W, 0.6, b) for b, share in mix.items())
    assert abs(float(tape.gradient(total, c)) - expected) < 1e-4


def test_weight_quantizer_learns_its_clip_and_masks_weights_beyond_it():
    from tf_bitpruning.quantizers import WeightBitQuantizer

    q = WeightBitQuantizer(init_bits=2, clip="learned", frozen=True)
    variables = q.build((9,), "k", keras.layers.Layer())
    w = tf.Variable(W)
    q(w, True, variables)  # the first training call starts the clip at the ternary mse clip
    assert float(variables["clip"]) == pytest.approx(float(quant_ops.mse_clip(tf.constant(W), 2.0)))
    variables["clip"].assign(0.6)
    with tf.GradientTape() as tape:
        out = q(w, True, variables)
        loss = tf.reduce_sum(out)
    g_w, g_c = tape.gradient(loss, [w, variables["clip"]])
    np.testing.assert_array_equal(out.numpy(), quant_ops.quantize_weights_int(W, 2.0, None, tf.constant(0.6)).numpy())
    np.testing.assert_array_equal(g_w.numpy(), (np.abs(W) <= 0.6).astype(np.float32))
    assert abs(float(g_c) - _lsq_dclip(W, 0.6, 2)) < 1e-4
    assert WeightBitQuantizer.from_config(q.get_config()) == q
    with pytest.raises(ValueError, match="grid='minmax'"):
        WeightBitQuantizer(clip="learned", grid="pow2")


def test_keras3_learned_ranges_and_clips_train_and_export(tmp_path):
    """Under Keras 3 (what ``import keras`` gives) the same options give trainable range and
    clip variables that training moves, and the model exports."""
    import os

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras as keras3

    inp = keras3.Input((8, 8, 1))
    x = keras3.layers.Conv2D(4, 3, activation="relu", name="conv")(inp)
    model = keras3.Model(inp, keras3.layers.Dense(3, name="dense")(keras3.layers.GlobalAveragePooling2D()(x)))
    bp = tfbp.bitprune_model(model, activation_range="learned", weight_clip="learned")
    learned = {w.path: w for w in bp.trainable_weights if w.path.endswith(("_clip", "_min"))}
    assert {"quant_conv/kernel_clip", "quant_dense/kernel_clip", "quant_conv/post_activation_min"} <= set(learned)
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 8, 8, 1), dtype=np.float32), rng.random((32, 3), dtype=np.float32)
    bp.compile(keras3.optimizers.Adam(1e-2), "mse")
    bp.fit(x, y, epochs=1, verbose=0)  # the first batch sets them, the next train them
    before = {k: np.array(v) for k, v in learned.items()}
    bp.fit(x, y, epochs=2, verbose=0)
    assert all(not np.array_equal(before[k], np.array(learned[k])) for k in learned), "a learned range or clip did not move"
    tfbp.export_tflite(tfbp.freeze_bitlengths(bp), tmp_path / "m.tflite")
