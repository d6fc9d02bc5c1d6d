"""BitBudget's annealing schedule (tf_bitpruning.budget_anneal), alone: no training."""

import doctest
import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tf_bitpruning as tfbp
from tf_bitpruning import budget_anneal, costs
from tf_bitpruning.budget_anneal import AnnealSchedule, slide


def test_docstring_example():
    assert doctest.testmod(budget_anneal).failed == 0


def test_planned_covers_the_last_share_of_the_epochs():
    assert AnnealSchedule.planned(0.25, 8, stop_when_met=False) == AnnealSchedule(6.0, 2.0)
    assert AnnealSchedule.planned(0.5, 3, stop_when_met=False) == AnnealSchedule(1.5, 1.5)


@pytest.mark.parametrize("share, epochs, stop_when_met", [(0.0, 8, False), (0.25, None, False), (0.25, 0, False),
                                                          (0.25, 8, True)])
def test_no_plan(share, epochs, stop_when_met):
    schedule = AnnealSchedule.planned(share, epochs, stop_when_met)
    assert schedule == AnnealSchedule() and not schedule.active
    assert schedule.begin == math.inf and schedule.progress(100, 5, 10) == 0.0


def test_progress_is_linear_in_training_steps_and_clipped():
    schedule = AnnealSchedule.planned(0.5, 4, stop_when_met=False)  # epochs 2 and 3 of 0..3
    steps = 4
    done = [schedule.progress(epoch, batch, steps) for epoch in range(4) for batch in range(steps)]
    assert done[:8] == [0.0] * 8
    np.testing.assert_allclose(done[8:], np.arange(1, 9) / 8)
    assert schedule.progress(9, 0, steps) == 1.0


def test_progress_without_known_steps_counts_whole_epochs():
    schedule = AnnealSchedule(2.0, 2.0)
    assert schedule.progress(2, 5, None) == 0.0
    assert schedule.progress(3, 5, None) == 0.5


def test_after_met_starts_next_epoch_for_at_least_one_epoch():
    assert AnnealSchedule.after_met(0.2, epoch=4, epochs=30) == AnnealSchedule(5.0, 6.0)
    assert AnnealSchedule.after_met(0.01, epoch=4, epochs=30) == AnnealSchedule(5.0, 1.0)
    assert AnnealSchedule.after_met(0.25, epoch=0, epochs=3) == AnnealSchedule(1.0, 1.0)  # ceil(0.75)


def test_done_after():
    schedule = AnnealSchedule(5.0, 2.0)
    assert [schedule.done_after(e) for e in (4, 5, 6, 7)] == [False, False, True, True]


def test_slide_is_linear_from_n_to_its_integer():
    n, b = np.array([5.3, 2.6]), np.array([6.0, 2.0])
    np.testing.assert_array_equal(slide(n, b, 0.0), n)
    np.testing.assert_allclose(slide(n, b, 0.5), [5.65, 2.3])
    np.testing.assert_array_equal(slide(n, b, 1.0), b)


def test_slide_is_what_the_quantizers_compute():
    bp = tfbp.bitprune_model(keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)]), regularization=0.05)
    bit_loss = costs.get_bit_loss(bp)
    bit_loss.anneal(True)
    tensor = bit_loss.tensors[0]
    integer = np.full(tensor.bits_variable.shape, 3.0, np.float32)
    bit_loss.anneal_bits[0].assign(integer)
    learned = tensor.quantizer.bitlength({"bits": tensor.bits_variable}).numpy()
    for p in (0.0, 0.3, 1.0):
        bit_loss.anneal_weight.assign(p)
        n = tensor.quantizer.bitlength({"bits": tensor.bits_variable}).numpy()
        np.testing.assert_allclose(n, slide(learned, integer, p), rtol=1e-6)
    assert tf.reduce_all(tensor.quantizer.bitlength({"bits": tensor.bits_variable}) == 3.0)
