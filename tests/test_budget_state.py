"""BitBudget's state (tf_bitpruning.budget_state): its checkpointed copy, alone and
through BitBudget, with tf.train.Checkpoint, tf_keras and Keras 3 weights; and the
callback's hooks driven by hand (no training)."""

import math

import keras as keras3
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

import tf_bitpruning as tfbp
from tf_bitpruning import budget_state, callbacks, costs
from tf_bitpruning.budget_anneal import AnnealSchedule
from tf_bitpruning.budget_control import ControlState, LambdaController
from tf_bitpruning.budget_state import BudgetState

from tests.support.models import small_cnn


def _state(**fields):
    state = BudgetState()
    state.control = ControlState(-2.5, (5.25, 12), -0.0031)
    state.schedule = AnnealSchedule(3.0, 1.0)
    state.met_epochs, state.steps_per_epoch = 2, 6
    for name, value in fields.items():
        setattr(state, name, value)
    return state


def _fields(state):
    return state.control, state.schedule, state.met_epochs, state.steps_per_epoch


def test_vector_layout_is_the_checkpointed_one():
    """The layout of the single-class BitBudget: older checkpoints restore."""
    assert budget_state.LAYOUT == ("stored", "log_lambda", "last_average", "velocity", "met_epochs",
                                   "anneal_begin", "anneal_epochs", "steps_per_epoch", "last_step")
    np.testing.assert_array_equal(_state().to_vector(), [1.0, -2.5, 5.25, -0.0031, 2.0, 3.0, 1.0, 6.0, 12.0])
    fresh = BudgetState().to_vector()  # None is NaN; "no annealing" begins at inf
    np.testing.assert_array_equal(fresh, [1.0, 0.0, np.nan, np.nan, 0.0, np.inf, 0.0, np.nan, np.nan])


@pytest.mark.parametrize("state", [_state(), BudgetState(),
                                   _state(control=ControlState(0.1, None, None), steps_per_epoch=None)])
def test_vector_round_trip(state):
    back = BudgetState()
    back.load_vector(state.to_vector())
    assert _fields(back) == _fields(state)
    assert isinstance(back.control.last[1] if back.control.last else 0, int)
    assert isinstance(back.met_epochs, int)


class _BitLoss(tf.Module):
    """Stands in for costs.BitLoss: a tf.Module the state's variable is tracked on."""


def test_save_and_resume_without_a_checkpoint():
    state = _state()
    state.save()  # not tracked yet: nothing to write
    assert not state.resume() and state.variable is None
    holder = _BitLoss()
    state.track(holder)
    assert holder.budget_state is state.variable and np.isnan(state.variable.numpy()).all()
    variable = state.variable
    state.track(holder)  # idempotent
    assert state.variable is variable
    assert not state.resume()  # nothing stored
    state.save()
    assert not state.resume()  # what it holds is its own


def test_checkpoint_restores_into_a_state_tracked_later(tmp_path):
    saved, holder = _state(), _BitLoss()
    saved.track(holder)
    saved.save()
    path = tf.train.Checkpoint(loss=holder).save(tmp_path / "ckpt")

    other = _BitLoss()
    tf.train.Checkpoint(loss=other).restore(path)  # the variable does not exist yet: deferred
    state = BudgetState()
    state.track(other)
    assert state.resume() and _fields(state) == _fields(saved)
    assert not state.resume()
    state.met_epochs = 3
    state.save()
    assert not state.resume()


def _bit_pruned(keras_module=keras):
    if keras_module is keras:
        model = small_cnn()
    else:
        L = keras3.layers
        inputs = keras3.Input((8, 8, 1))
        x = L.Flatten()(L.Conv2D(4, 3, activation="relu")(inputs))
        model = keras3.Model(inputs, L.Dense(10)(x))
    bp = tfbp.bitprune_model(model, regularization=0.05)
    bp.compile(keras_module.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    return bp


@pytest.mark.parametrize("name, keras_module, suffix", [("tf_keras", keras, "weights"),
                                                        ("keras3", keras3, "weights.h5"),
                                                        ("keras3 .keras", keras3, "keras")])
def test_model_weights_carry_the_state(tmp_path, name, keras_module, suffix):
    a = _bit_pruned(keras_module)
    budget = tfbp.BitBudget(target_bits=4.0)
    budget.set_model(a)
    budget._state.control = ControlState(-2.5, (5.25, 12), -0.0031)
    budget._state.save()
    path = str(tmp_path / f"model.{suffix}")
    a.save(path) if suffix == "keras" else a.save_weights(path)

    b = _bit_pruned(keras_module)
    resumed = tfbp.BitBudget(target_bits=4.0)
    resumed.set_model(b)  # tracks the state's variable, then the weights load into it
    b.load_weights(path)
    assert resumed._resume_state()
    assert resumed._state.control == budget._state.control
    assert float(costs.get_bit_loss(b).regularization) == float(np.float32(math.exp(-2.5)))


def test_private_names_reach_the_state():
    budget = tfbp.BitBudget(target_bits=4.0)
    budget._log_lambda, budget._last, budget._anneal_epochs, budget._met_epochs = -1.0, (6.0, 3), 2.0, 4
    assert budget._state.control == ControlState(-1.0, (6.0, 3), None)
    assert budget._state.schedule == AnnealSchedule(math.inf, 2.0) and budget._state.met_epochs == 4
    assert (budget._velocity, budget._anneal_begin, budget._steps_per_epoch) == (None, math.inf, None)


def test_hooks_by_hand_follow_the_controller_and_the_schedule():
    """The callback's hooks, called as fit would (5 steps per epoch, 4 epochs), with
    the bitlengths and the optimizer's step moved by hand."""
    bp = _bit_pruned()
    budget = tfbp.BitBudget(target_bits=4.0, anneal=0.5, speed=0.01)
    budget.set_model(bp)
    budget.set_params({"epochs": 4, "steps": 5, "verbose": 0})
    loss = costs.get_bit_loss(bp)
    iterations = bp.optimizer.iterations
    budget.on_train_begin()
    assert budget._state.schedule == AnnealSchedule(2.0, 2.0)
    control = LambdaController(4.0, 1e-5, 10.0)
    expected = control.start(float(np.float32(0.05)), 8.0, int(iterations.numpy()))
    assert budget._state.control == expected
    budget.on_epoch_begin(0)
    for batch in range(5):
        budget.on_train_batch_begin(batch)
        for t in loss.tensors:  # the bitlengths fall by 0.02 bit per step
            t.bits_variable.assign_sub(tf.fill(t.bits_variable.shape, 0.02 / t.quantizer.bits_lr_multiplier))
        iterations.assign_add(1)
        logs = {}
        budget.on_train_batch_end(batch, logs)
        expected = control.update(expected, logs["avg_bits"], int(iterations.numpy()), 0.01)
        assert budget._state.control == expected
        assert logs["bit_lambda"] == pytest.approx(control.regularization(expected.log_lambda), rel=1e-6)
    assert expected.log_lambda < math.log(0.05)  # twice as fast as asked: λ fell
    logs = {}
    budget.on_epoch_end(0, logs)
    assert budget._state.steps_per_epoch == 5 and set(logs) >= {"avg_bits", "bit_lambda"}
    np.testing.assert_array_equal(loss.budget_state.numpy(), budget._state.to_vector())
    for epoch in (1, 2, 3):  # epochs 2 and 3 anneal; λ is held
        held = budget._state.control.log_lambda
        budget.on_epoch_begin(epoch)
        for batch in range(5):
            budget.on_train_batch_begin(batch)
            assert float(loss.anneal_weight.numpy()) == pytest.approx(budget.anneal_progress(epoch, batch))
            iterations.assign_add(1)
            budget.on_train_batch_end(batch, {})
        budget.on_epoch_end(epoch, {})
        assert (budget._state.control.log_lambda == held) == (epoch >= 2)
    budget.on_train_end()
    bits = tfbp.bitlengths(bp)
    assert all(b == round(b) for b in bits.values()) and tfbp.average_bits(bp) <= 4.0 + 1e-6


def test_bits_range_is_still_in_callbacks():
    assert callbacks.bits_range is not None and tfbp.BitBudget is callbacks.BitBudget
