"""weight_clip="mse": the top of each weight grid is the clip with the least
squared error (quant_ops.mse_clip) instead of max|w|; an option, off by default.
The exported file computes the same grid."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tf_bitpruning as tfbp
from tf_bitpruning import costs, quant_ops
from tf_bitpruning.quantizers import WeightBitQuantizer
from tests.support.models import small_cnn


def _error(w, bits, axes, top=None):
    return float(tf.reduce_sum(tf.square(quant_ops.quantize_weights_int(w, bits, axes, top) - w)))


@pytest.mark.parametrize("axes", [None, [0, 1, 2]])
def test_mse_clip_never_has_more_error_than_max(axes):
    w = tf.constant(np.random.default_rng(0).normal(size=(3, 3, 8, 16)).astype(np.float32))
    top = quant_ops.max_abs(w, axes)
    for bits in range(2, 9):
        clip = quant_ops.mse_clip(w, bits, axes)
        assert clip.shape == top.shape
        assert np.all(clip.numpy() <= top.numpy() + 1e-7)
        assert _error(w, bits, axes, clip) <= _error(w, bits, axes) + 1e-6
    # Ternary on Gaussian weights: min-max zeroes most weights; the clip cuts the error by far.
    assert _error(w, 2, axes, quant_ops.mse_clip(w, 2, axes)) < 0.5 * _error(w, 2, axes)
    # Per-channel bitlengths broadcast against per-channel clips.
    if axes is not None:
        bits = tf.constant(np.arange(16).reshape(1, 1, 1, 16) % 3 + 2, tf.float32)
        assert quant_ops.mse_clip(w, bits, axes).shape == (1, 1, 1, 16)


def test_quantizer_option_and_config():
    assert "clip" not in WeightBitQuantizer().get_config()  # default config unchanged
    q = WeightBitQuantizer(init_bits=3, per_channel_bits=True, clip="mse")
    assert WeightBitQuantizer.from_config(q.get_config()) == q
    with pytest.raises(ValueError, match="clip"):
        WeightBitQuantizer(clip="percentile")
    with pytest.raises(ValueError, match="clip"):
        tfbp.bitprune_model(small_cnn(), weight_clip="nope")


@pytest.mark.slow
def test_mse_clip_model_trains_freezes_and_exports_the_same_grid(digits, tmp_path):
    from tests.support.litert_run import output_step, run_tflite
    from tests.support.tflite_checks import top1_agreement
    from tf_bitpruning.export import grids

    xtr, ytr, xte, _ = digits
    bp = tfbp.bitprune_model(small_cnn(), weight_clip="mse", per_channel_bits=True, init_bits=3)
    bp.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    bp.fit(xtr, ytr, epochs=3, batch_size=32, verbose=0)
    frozen = tfbp.freeze_bitlengths(bp)
    frozen.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
    frozen.fit(xtr[:64], ytr[:64], epochs=1, verbose=0)
    for t in costs.quantized_tensors(frozen):
        if t.kind != "weights":
            continue
        q = t.quantizer(t.weight, False, t.variables).numpy()
        w = t.weight.numpy()
        top_q, top_w = (np.abs(a).reshape(-1, a.shape[-1]).max(0) for a in (q, w))
        assert np.all(top_q <= top_w + 1e-7) and np.sum(top_q) < np.sum(top_w), t.name  # clipped
        # The exporter's b-bit kernel is the one Keras computes, on its int8 step grid.
        exp = grids.weight_export(t.quantizer, t.variables, t.weight, t.name, None, None)
        np.testing.assert_allclose(exp.kernel, q, rtol=1e-6, atol=1e-7)
        codes = exp.kernel / exp.scale
        np.testing.assert_allclose(codes, np.round(codes), atol=1e-3)
        assert np.abs(codes).max() <= 2 ** (int(np.max(np.round(t.quantizer.bitlength(t.variables)))) - 1) - 1 + 1e-3
    path = str(tmp_path / "clip.tflite")
    tfbp.export_tflite(frozen, path, representative_dataset=xtr[:64])
    a = top1_agreement(run_tflite(path, xte), frozen.predict(xte, verbose=0), output_step(path))
    assert a.decided > 100 and a.rate >= 0.98, a
