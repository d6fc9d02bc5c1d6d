"""Real ``keras.applications`` networks through the whole pipeline (slow tier):
``bitprune_model -> fit(BitBudget) -> freeze_bitlengths -> fit -> export_tflite ->
LiteRT``, the file compared with Keras where Keras decides (tests/support/tflite_checks.py).

The real constructors (random weights, ``classes=10``, ``classifier_activation=None``)
at 32x32, their smallest input, trained 8 steps on digits resized to 32x32 (annealed
to a 6-bit budget), frozen and fine-tuned 2 steps. The steps run eagerly
(``run_eagerly=True``): tracing a train step of 200-300 quantizers costs about a
minute of one core per network and phase (learning, fine-tuning), more than the
eager steps themselves; the traced path is what the other tests and
``benchmarks/applications.py`` (every family, hundreds of steps) run. The other
families: docs/benchmarks.md, keras.applications coverage.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tf_bitpruning as tfbp
from tf_bitpruning import costs
from tf_bitpruning.export import export_tflite
from tests.support.litert_run import output_step, run_tflite
from tests.support.tflite_checks import top1_agreement

pytest.importorskip("ai_edge_litert.interpreter")

# name -> whether the network rescales [0, 255] inputs itself (a Rescaling layer first)
FAMILIES = {"MobileNetV3Small": True, "EfficientNetB0": True, "DenseNet121": False}
SIZE, BATCH, STEPS, FINETUNE_STEPS = 32, 16, 8, 2


def _images(x, raw_255):
    x = tf.image.resize(x, (SIZE, SIZE)).numpy()
    x = np.repeat(np.clip(x, 0.0, 1.0), 3, axis=-1).astype(np.float32)
    return x * 255.0 if raw_255 else x


def build(name):
    model = getattr(keras.applications, name)(weights=None, input_shape=(SIZE, SIZE, 3), classes=10,
                                              classifier_activation=None)
    # Moving statistics of the last few training batches: after a few steps the default
    # momentum (0.99, MobileNetV3 0.999) leaves inference statistics far from the
    # batches the activation ranges were calibrated on, and every input saturates
    # to the same logits (nothing to compare).
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.5
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_application_end_to_end(name, digits, tmp_path):
    xtr, ytr, xte, _ = digits
    xtr, xte = _images(xtr[:BATCH * STEPS], FAMILIES[name]), _images(xte[:256], FAMILIES[name])
    ytr = ytr[:BATCH * STEPS]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    bp = tfbp.bitprune_model(build(name), regularization=0.01)
    assert len(costs.quantized_tensors(bp)) > 200
    bp.compile(keras.optimizers.Adam(1e-3), loss, run_eagerly=True)
    # Annealing starts after 6 of the 8 steps: fit_budget then lowers every tensor
    # from 8 bits to the budget at once (hundreds of moves over hundreds of tensors).
    bp.fit(xtr, ytr, batch_size=BATCH, epochs=1, verbose=0, callbacks=[tfbp.BitBudget(6.0)])
    assert tfbp.average_bits(bp) <= 6.0 + 1e-5

    frozen = tfbp.freeze_bitlengths(bp)
    frozen.compile(keras.optimizers.Adam(2e-4), loss, run_eagerly=True)
    frozen.fit(xtr[:BATCH * FINETUNE_STEPS], ytr[:BATCH * FINETUNE_STEPS], batch_size=BATCH, verbose=0)

    path = tmp_path / f"{name}.tflite"
    # Learned grids only, as docs/benchmarks.md says of every family: no calibration data. An
    # ExportError here is a regression, not something to retry around. align=False: this test
    # measures the model before and after align_to_tflite (export_tflite aligns by default).
    export_tflite(frozen, path, align=False)
    assert tfbp.read_precision(path)
    got = run_tflite(path, xte)
    step = output_step(path)
    before = frozen(xte, training=False).numpy()
    # The pipeline's last step: Keras' biases onto the file's int32 grid (align_to_tflite), so
    # that a value near a rounding midpoint rounds alike in both.
    assert tfbp.align_to_tflite(frozen, path)
    ref = frozen(xte, training=False).numpy()

    logit_range = float(ref.max() - ref.min())
    assert logit_range > 10 * step, "constant logits: the comparison would say nothing"
    # A wrong scale, zero point or fold moves every output by a large share of the range.
    median = float(np.median(np.abs(got - ref)))
    assert median <= 0.1 * logit_range, (median / step, logit_range / step)
    # Deep networks: a hidden value on a grid midpoint can round the other way in LiteRT
    # (CPU-dependent: oneDNN, threads) and the difference grows with depth. Top-1 is
    # compared where Keras' top-2 margin exceeds 10 % of the logit range (each logit may
    # move 5 %).
    tolerance = max(1.0, 0.05 * logit_range / step)
    a = top1_agreement(got, ref, step, tolerance=tolerance)
    b = top1_agreement(got, before, step, tolerance=tolerance)
    off_after = float(np.mean(np.abs(got - ref) > 0.5 * step))
    off_before = float(np.mean(np.abs(got - before) > 0.5 * step))
    print(f"{name}: aligned {a}, before {b}; outputs a step or more off: {off_after:.3f} aligned, "
          f"{off_before:.3f} before; median |difference| {median / step:.1f} of {logit_range / step:.0f} steps")
    # The alignment is what makes deep networks agree: without it the int32 bias grid flips
    # midpoint values that depth amplifies. It must remove most of the output differences
    # (if it did nothing, off_after == off_before).
    assert off_after <= 0.5 * off_before, (off_after, off_before)
    assert a.decided >= 20, a
    # After the alignment Keras and the file compute the same integers except where float
    # rounding lands a value on a midpoint (Keras' float fake-quant against TFLite's integer
    # requantization); after 8 steps from random weights these networks' large gains and
    # close logits amplify such a flip (measured on one machine: MobileNetV3Small 79 of 79,
    # EfficientNetB0 60 of 63, DenseNet121 156 of 157; before the alignment 78 of 88, 39 of
    # 61, 151 of 163). The median output is the file's own (before: 2-4 steps off).
    assert median <= step + 1e-6 * logit_range, (median / step, a)
    assert a.rate >= 0.9, a
