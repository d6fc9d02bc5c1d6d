"""Exact resume: a bit-pruning run killed mid-training and resumed ends where an
uninterrupted run ends (bitlengths, λ, every variable), with
``keras.callbacks.BackupAndRestore`` and with a ``tf.train.Checkpoint`` of model +
optimizer.

``resume_run.py`` trains the digits CNN with ``BitBudget`` for 4 epochs (the last
one annealing), saving at every epoch end. The killed runs end themselves with
``os._exit`` after batch 2 of epoch 2 (those batches are lost, as in a real crash)
and a fresh process resumes from the epoch-1 save. Op determinism is on and every
process runs the same kernels on the same data in the same order, so the runs
agree exactly: the checkpoints hold the model, Adam's slots, λ and BitBudget's own
state (``bit_loss.budget_state``: log λ, the last measurement, the smoothed speed,
counters). Before BitBudget's state was saved, the resumed λ path restarted
(smoothed speed forgotten, log λ re-derived from the float32 λ) and the runs
drifted apart.
"""

import numpy as np
import pytest

from subprocesses import finish, start

pytestmark = pytest.mark.slow  # five training subprocesses

KILLED = 17  # resume_run.py's exit status when it died on purpose
MODES = ("backup", "checkpoint")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    first = finish([start("resume_run.py", "backup", root / "full")] +
                   [start("resume_run.py", mode, root / mode, "--die-at", "2:2") for mode in MODES])
    returncode, full, err = first[0]
    assert returncode == 0, err[-4000:]
    for (returncode, result, err), mode in zip(first[1:], MODES):
        assert returncode == KILLED and result is None, f"{mode}: did not die as planned\n{err[-4000:]}"
    resumed = finish([start("resume_run.py", mode, root / mode) for mode in MODES])
    for (returncode, _, err), mode in zip(resumed, MODES):
        assert returncode == 0, f"{mode}: resume failed\n{err[-4000:]}"
    return full, dict(zip(MODES, (result for _, result, _ in resumed)))


@pytest.mark.parametrize("mode", MODES)
def test_resumed_run_ends_exactly_like_an_uninterrupted_one(runs, mode):
    full, resumed = runs[0], runs[1][mode]
    assert full["epochs"] == [0, 1, 2, 3]
    assert resumed["epochs"] == [2, 3]  # restarted from the end of epoch 1, not from scratch
    assert resumed["iterations"] == full["iterations"]
    assert full["bit_lambda"] != 0.05  # BitBudget moved λ, so λ's equality below says something
    assert resumed["bit_lambda"] == full["bit_lambda"]
    assert resumed["bits"] == full["bits"]
    assert list(resumed["variables"]) == list(full["variables"])
    for name, value in full["variables"].items():  # the raw bitlength parameters and ranges too
        np.testing.assert_array_equal(resumed["variables"][name], value, err_msg=name)
