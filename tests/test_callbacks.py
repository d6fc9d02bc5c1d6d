"""BitBudget: λ adapts so that the average bitlength settles at the target; logs
reach Keras' logs, History and TensorBoard; clear errors."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tf_bitpruning as tfbp
from tf_bitpruning import costs
from tf_bitpruning.callbacks import bits_range
from tests.support.models import small_cnn

LOG_KEYS = ("avg_bits", "avg_weight_bits", "avg_activation_bits", "bit_lambda")


def _bitpruned(**options):
    # A faster bitlength rate (20 x lr) keeps the runs short: ~0.016 bit per step.
    bp = tfbp.bitprune_model(small_cnn(), regularization=0.05, bits_lr_multiplier=20.0, **options)
    bp.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return bp


class _BatchLogs(keras.callbacks.Callback):
    """Records the keys of the logs that callbacks after BitBudget see per batch."""

    def __init__(self):
        super().__init__()
        self.keys = set()

    def on_train_batch_end(self, batch, logs=None):
        self.keys |= set(logs or {})


@pytest.mark.slow
@pytest.mark.parametrize("target", [3.0, 5.0])
def test_budget_settles_at_target(digits, target):
    xtr, ytr, xte, yte = digits
    bp = _bitpruned()
    budget = tfbp.BitBudget(target_bits=target)
    batch_logs = _BatchLogs()
    history = bp.fit(xtr, ytr, epochs=14, batch_size=32, verbose=0, callbacks=[budget, batch_logs])
    reached = tfbp.average_bits(bp)
    assert abs(reached - target) <= 0.25, (target, reached, history.history["avg_bits"])
    # The last epochs stay at the target: no oscillation.
    assert np.all(np.abs(np.array(history.history["avg_bits"][-3:]) - target) <= 0.25)
    assert history.history["avg_bits"][-1] == pytest.approx(reached, abs=1e-5)
    for key in LOG_KEYS:
        assert key in history.history and len(history.history[key]) == 14
    assert set(LOG_KEYS) <= batch_logs.keys
    lambdas = np.array(history.history["bit_lambda"])
    assert np.all((lambdas >= 1e-5) & (lambdas <= 10.0))
    assert bp.evaluate(xte, yte, verbose=0)[1] > 0.85


@pytest.mark.slow
def test_lambda_falls_when_below_target(digits):
    """Bitlengths far below the target: λ drops towards its floor and the task
    loss pulls the bits back up."""
    xtr, ytr, _, _ = digits
    bp = _bitpruned(init_bits=3.0)
    budget = tfbp.BitBudget(target_bits=6.0, regularization_range=(1e-4, 1.0))
    history = bp.fit(xtr, ytr, epochs=5, batch_size=32, verbose=0, callbacks=[budget])
    lambdas, bits = history.history["bit_lambda"], history.history["avg_bits"]
    assert lambdas[-1] < 1e-3 and float(costs.get_bit_loss(bp).regularization) >= 1e-4 * (1 - 1e-6)  # float32 floor
    assert bits[-1] > bits[2] + 0.15  # rising once λ is low


@pytest.mark.slow
def test_stop_when_met(digits):
    xtr, ytr, _, _ = digits
    bp = _bitpruned()
    budget = tfbp.BitBudget(target_bits=7.0, stop_when_met=True, patience=2, tolerance=0.25)
    history = bp.fit(xtr, ytr, epochs=12, batch_size=32, verbose=0, callbacks=[budget])
    epochs_run = len(history.history["loss"])
    assert epochs_run < 12 and budget.stopped_epoch == epochs_run - 1
    assert all(abs(b - 7.0) <= 0.25 for b in history.history["avg_bits"][-2:])


@pytest.mark.slow
def test_weighting_and_kind_reach_the_bit_loss(digits):
    """The callback switches the attached loss to its weighting/kind before the
    train function is traced, also on a model that was already trained."""
    xtr, ytr, _, _ = digits
    bp = _bitpruned()
    bp.fit(xtr[:64], ytr[:64], epochs=1, batch_size=32, verbose=0)  # traced with "uniform"
    budget = tfbp.BitBudget(target_bits=6.0, weighting="memory", kind="weights")
    bp.fit(xtr[:64], ytr[:64], epochs=1, batch_size=32, verbose=0, callbacks=[budget])
    loss = costs.get_bit_loss(bp)
    assert (loss.weighting, loss.kind) == ("memory", "weights")
    expected = float(loss.regularization) * costs.average_bits(bp, kind="weights", weighting="memory")
    assert float(loss()) == pytest.approx(expected, rel=1e-5)
    # Activations are not regularized with kind="weights".
    assert costs.average_bits(bp, kind="activations") > costs.average_bits(bp, kind="weights")


def _events(directory):
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(directory, size_guidance={"tensors": 0})
    acc.Reload()
    return acc


@pytest.mark.slow
def test_tensorboard_summaries(digits, tmp_path):
    xtr, ytr, _, _ = digits
    bp = _bitpruned()
    log_dir = str(tmp_path)
    budget = tfbp.BitBudget(target_bits=4.0, log_dir=log_dir)
    bp.fit(xtr[:256], ytr[:256], epochs=2, batch_size=32, verbose=0,
           callbacks=[budget, keras.callbacks.TensorBoard(log_dir)])
    assert os.path.isdir(os.path.join(log_dir, "train"))  # Keras' own, next to ours
    ours = os.path.join(log_dir, "bitpruning")
    assert glob.glob(os.path.join(ours, "events.out.tfevents.*"))
    acc = _events(ours)
    tags = set(acc.Tags()["tensors"])
    expected = {"bits/weights/conv2d", "bits/activations/conv2d", "bits/weights/dense",
                "bits/activations/quantize_layer", "bits_histogram/weights", "bits_histogram/activations",
                "avg_bits", "avg_bits/weights", "avg_bits/activations", "bit_lambda", "model_size_kb"}
    assert expected <= tags, expected - tags
    avg = acc.Tensors("avg_bits")
    assert [e.step for e in avg] == [0, 1]
    assert float(tf.make_ndarray(avg[-1].tensor_proto)) == pytest.approx(tfbp.average_bits(bp), abs=1e-4)
    hist = tf.make_ndarray(acc.Tensors("bits_histogram/weights")[-1].tensor_proto)
    assert hist.shape[-1] == 3 and hist[:, 2].sum() == 3  # 3 kernels: (left, right, count) buckets
    size = float(tf.make_ndarray(acc.Tensors("model_size_kb")[-1].tensor_proto))
    expected_kb = sum(t.elements * float(t.bits()) for t in costs.quantized_tensors(bp) if t.kind == "weights") / 8192
    assert size == pytest.approx(expected_kb, rel=1e-4)
    lam = float(tf.make_ndarray(acc.Tensors("bit_lambda")[-1].tensor_proto))
    assert lam == pytest.approx(float(costs.get_bit_loss(bp).regularization), rel=1e-5)


def test_bits_range():
    bp = tfbp.bitprune_model(small_cnn())
    tensors = costs.quantized_tensors(bp)
    low, high = bits_range(tensors, "uniform")
    assert low == pytest.approx((4 * 1 + 3 * 2) / 7) and high == 8.0  # 4 activations (1), 3 kernels (2)
    assert bits_range(tensors, "uniform", "weights") == (2.0, 8.0)
    assert bits_range(tensors, "bops")[1] == pytest.approx(8.0)


@pytest.mark.parametrize("target", [1.2, 8.5])
def test_unreachable_target(digits, target):
    xtr, ytr, _, _ = digits
    bp = _bitpruned()
    with pytest.raises(ValueError, match="cannot be reached"):
        bp.fit(xtr[:32], ytr[:32], epochs=1, verbose=0, callbacks=[tfbp.BitBudget(target)])


def test_weight_budget_below_weight_min_bits(digits):
    xtr, ytr, _, _ = digits
    bp = _bitpruned()
    with pytest.raises(ValueError, match=r"\[2, 8\]"):
        bp.fit(xtr[:32], ytr[:32], epochs=1, verbose=0, callbacks=[tfbp.BitBudget(1.5, kind="weights")])


def test_not_bitpruned_model(digits):
    xtr, ytr, _, _ = digits
    model = small_cnn()
    model.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="not bit-pruned"):
        model.fit(xtr[:32], ytr[:32], epochs=1, verbose=0, callbacks=[tfbp.BitBudget(4.0)])


def test_frozen_model_is_rejected(digits):
    xtr, ytr, _, _ = digits
    with pytest.warns(UserWarning, match="never calibrated"):
        frozen = tfbp.freeze_bitlengths(_bitpruned())
    frozen.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="frozen"):
        frozen.fit(xtr[:32], ytr[:32], epochs=1, verbose=0, callbacks=[tfbp.BitBudget(4.0)])


@pytest.mark.parametrize("kwargs, match", [
    (dict(target_bits=0.0), "target_bits"),
    (dict(target_bits="four"), "target_bits"),
    (dict(target_bits=4.0, weighting="area"), "weighting"),
    (dict(target_bits=4.0, kind="bias"), "kind"),
    (dict(target_bits=4.0, weighting="bops", kind="activations"), "bops"),
    (dict(target_bits=4.0, regularization_range=(1.0, 0.1)), "regularization_range"),
    (dict(target_bits=4.0, initial_regularization=-1.0), "regularization"),
    (dict(target_bits=4.0, patience=0), "patience"),
    (dict(target_bits=4.0, speed=0.0), "speed"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tfbp.BitBudget(**kwargs)


def _fit_warnings(bp, x, y, epochs, **budget):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bp.fit(x, y, epochs=epochs, batch_size=32, verbose=0, callbacks=[tfbp.BitBudget(**budget)])
    return [str(w.message) for w in caught if "can fall at most" in str(w.message)]


def _dense(optimizer, K=keras, **options):
    bp = tfbp.bitprune_model(K.Sequential([K.Input((8,)), K.layers.Dense(4)]), **options)
    bp.compile(optimizer, "sparse_categorical_crossentropy")
    return bp


@pytest.mark.parametrize("kname", ["tf_keras", "keras3"])
def test_warns_when_the_optimizer_cannot_reach_the_target_in_time(kname):
    import keras as keras3

    K = {"tf_keras": keras, "keras3": keras3}[kname]
    # 64 samples, batch 32: 2 steps per epoch. At Adam 1e-4 and bits_lr_multiplier 10 a
    # bitlength moves at most ~0.001 bit per step: 8 -> 3.1 bits (the target and its tolerance)
    # takes 4,900 steps before annealing (6,534 with its last quarter), far more than this fit's 2.
    x = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    y = np.arange(64) % 4
    (message,) = _fit_warnings(_dense(K.optimizers.Adam(1e-4), K), x, y, epochs=1, target_bits=3.0)
    assert "Train at least 6534 steps" in message, message
    assert "bits_lr_multiplier" in message and "init_bits" in message
    # Another optimizer (no bound to state): no warning.
    assert _fit_warnings(_dense(K.optimizers.SGD(1e-4), K), x, y, epochs=1, target_bits=3.0) == []


def test_no_reach_warning_where_the_full_step_gets_there():
    from tf_bitpruning.budget_model import BudgetedModel

    budgeted = BudgetedModel(_dense(keras.optimizers.Adam(1e-2), init_bits=3.5), 3.0, "uniform", None, True)
    # 0.1 bit per step (Adam 1e-2 x 10): 5 steps cover the 0.4 bit outside the tolerance, 3 do
    # not (4 before annealing, 6 with it, are needed).
    assert budgeted.reach_warning(3.5, 3.0, 0.1, steps=5, anneal=0.25) is None
    assert "at least 6 steps" in budgeted.reach_warning(3.5, 3.0, 0.1, steps=3, anneal=0.25)
    schedule = keras.optimizers.schedules.CosineDecay(1e-4, 100)
    budgeted = BudgetedModel(_dense(keras.optimizers.Adam(schedule)), 3.0, "uniform", None, True)
    assert budgeted.reach_warning(8.0, 3.0, 0.1, steps=3, anneal=0.25) is None  # a schedule: no bound
