"""Exact resume: a bit-pruning run killed mid-training and resumed ends where an
uninterrupted run ends (bitlengths, λ, every variable), with
``keras.callbacks.BackupAndRestore`` and with a ``tf.train.Checkpoint`` of model +
optimizer.

``resume_run.py`` trains the digits CNN with ``BitBudget`` for 4 epochs (the last
two annealing the bitlengths to integers), saving at every epoch end. The killed
runs end themselves with ``os._exit`` after batch 2 of epoch 3 (those batches are
lost, as in a real crash) and a fresh process resumes from the epoch-2 save, in the
middle of annealing (the integers and the anneal weight come back too). Op determinism is on and every
process runs the same kernels on the same data in the same order, so the runs
agree exactly: the checkpoints hold the model, Adam's slots, λ and BitBudget's own
state (``bit_loss.budget_state``: log λ, the last measurement, the smoothed speed,
counters). Before BitBudget's state was saved, the resumed λ path restarted
(smoothed speed forgotten, log λ re-derived from the float32 λ) and the runs
drifted apart.
"""

import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tf_bitpruning as tfbp
from tf_bitpruning import costs

from tests.support.models import small_cnn
from tests.support.subprocesses import finish, start

KILLED = 17  # resume_run.py's exit status when it died on purpose
MODES = ("backup", "checkpoint")


def test_budget_state_travels_with_a_checkpoint(tmp_path):
    """In one process, without training: what one BitBudget stored comes back in a
    fresh model's BitBudget from a checkpoint restored before the budget existed."""
    def make():
        bp = tfbp.bitprune_model(small_cnn(), regularization=0.05)
        bp.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        return bp

    a = make()
    budget = tfbp.BitBudget(target_bits=4.0)
    budget.set_model(a)
    state = {"_log_lambda": -2.5, "_last": (5.25, 12), "_velocity": -0.0031, "_met_epochs": 2,
             "_anneal_begin": 3.0, "_anneal_epochs": 1.0, "_steps_per_epoch": 6}
    for field, value in state.items():
        setattr(budget, field, value)
    budget._state.save()
    budget._assign(-2.5)
    path = tf.train.Checkpoint(model=a).save(tmp_path / "ckpt")

    b = make()
    tf.train.Checkpoint(model=b).restore(path)  # the state's variable does not exist yet: deferred
    resumed = tfbp.BitBudget(target_bits=4.0)
    resumed.set_model(b)  # creates and tracks it: restored now
    assert resumed._resume_state()
    assert {field: getattr(resumed, field) for field in state} == state
    assert float(costs.get_bit_loss(b).regularization) == float(np.float32(math.exp(-2.5)))
    assert not resumed._resume_state()  # what it holds now is its own: a later fit() starts afresh


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    first = finish([start("resume_run.py", "backup", root / "full")] +
                   [start("resume_run.py", mode, root / mode, "--die-at", "3:2") for mode in MODES])
    returncode, full, err = first[0]
    assert returncode == 0, err[-4000:]
    for (returncode, result, err), mode in zip(first[1:], MODES):
        assert returncode == KILLED and result is None, f"{mode}: did not die as planned\n{err[-4000:]}"
    resumed = finish([start("resume_run.py", mode, root / mode) for mode in MODES])
    for (returncode, _, err), mode in zip(resumed, MODES):
        assert returncode == 0, f"{mode}: resume failed\n{err[-4000:]}"
    return full, dict(zip(MODES, (result for _, result, _ in resumed)))


@pytest.mark.slow  # five training subprocesses
@pytest.mark.parametrize("mode", MODES)
def test_resumed_run_ends_exactly_like_an_uninterrupted_one(runs, mode):
    full, resumed = runs[0], runs[1][mode]
    assert full["epochs"] == [0, 1, 2, 3]
    assert resumed["epochs"] == [3]  # restarted from the end of epoch 2 (half annealed), not from scratch
    assert resumed["iterations"] == full["iterations"]
    assert full["bit_lambda"] != 0.05  # BitBudget moved λ, so λ's equality below says something
    assert resumed["bit_lambda"] == full["bit_lambda"]
    assert resumed["bits"] == full["bits"]
    assert list(resumed["variables"]) == list(full["variables"])
    for name, value in full["variables"].items():  # the raw bitlength parameters and ranges too
        np.testing.assert_array_equal(resumed["variables"][name], value, err_msg=name)
