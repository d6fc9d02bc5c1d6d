"""BitBudget's λ controller (tf_bitpruning.budget_control), alone: plain Python, no training."""

import doctest
import math

import pytest

from tf_bitpruning import budget_control
from tf_bitpruning.budget_control import ControlState, LambdaController

SPEED = 0.01


def _controller(**options):
    return LambdaController(**dict(dict(target=4.0, low=1e-5, high=10.0), **options))


def test_docstring_example():
    assert doctest.testmod(budget_control).failed == 0


def test_start_clips_lambda_and_takes_the_first_measurement():
    control = _controller(low=1e-3, high=1.0)
    assert control.start(0.05, 7.5, 3) == ControlState(math.log(0.05), (7.5, 3), None)
    assert control.start(5.0, 7.5, 3).log_lambda == pytest.approx(0.0)
    assert control.start(1e-9, 7.5, 3).log_lambda == pytest.approx(math.log(1e-3))


def test_regularization_is_exp_log_lambda_clipped():
    control = _controller(low=1e-3, high=1.0)
    assert control.regularization(math.log(0.2)) == pytest.approx(0.2)
    assert control.regularization(5.0) == 1.0
    assert control.regularization(-50.0) == 1e-3


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (1.0, 0.5), (1e-3, math.inf)])
def test_bad_range(low, high):
    with pytest.raises(ValueError, match="low < high"):
        LambdaController(target=4.0, low=low, high=high)


def test_bad_gain_and_settle_steps():
    with pytest.raises(ValueError, match="gain"):
        _controller(gain=0.0)
    with pytest.raises(ValueError, match="settle_steps"):
        _controller(settle_steps=-1.0)


def test_desired_speed_is_the_clipped_path():
    control = _controller(settle_steps=100.0)
    assert control.desired_speed(8.0, SPEED) == -SPEED  # far above: as fast as allowed, down
    assert control.desired_speed(4.5, SPEED) == pytest.approx(-0.005)  # near: error / settle_steps
    assert control.desired_speed(4.0, SPEED) == 0.0
    assert control.desired_speed(1.0, SPEED) == SPEED  # far below: up


def test_measurements_that_move_nothing():
    control = _controller()
    state = ControlState(-3.0, (6.0, 10), -0.01)
    assert control.update(state, float("nan"), 11, SPEED) is state
    assert control.update(ControlState(-3.0), 6.0, 10, SPEED) == ControlState(-3.0, (6.0, 10), None)
    # No training step since the last measurement: only a new reference.
    assert control.update(state, 5.9, 10, SPEED) == ControlState(-3.0, (5.9, 10), -0.01)


def test_lambda_falls_when_the_average_falls_faster_than_asked():
    control = _controller()
    state = control.update(control.start(0.05, 8.0, 0), 7.95, 1, SPEED)  # -0.05 bit/step, asked -0.01
    assert state.velocity == pytest.approx(-0.05)
    assert state.log_lambda == pytest.approx(math.log(0.05) - 0.03)  # full error: one gain step
    assert state.last == (7.95, 1)


def test_lambda_rises_when_the_average_falls_slower_than_asked():
    control = _controller()
    state = control.update(control.start(0.05, 8.0, 0), 8.0, 1, SPEED)  # standing still, asked -0.01
    assert state.log_lambda == pytest.approx(math.log(0.05) + 0.03)


def test_error_is_relative_to_the_desired_speed_with_a_floor():
    control = _controller(target=4.0, settle_steps=100.0, gain=0.1, speed_floor=0.25)
    # At the target the desired speed is 0; the error is scaled by speed_floor · speed.
    state = control.update(ControlState(0.0, (4.0, 0), None), 4.001, 1, SPEED)
    desired = -0.001 / 100.0
    assert state.log_lambda == pytest.approx(0.1 * (0.001 - desired) / (0.25 * SPEED))


def test_velocity_is_smoothed_and_steps_scale_the_update():
    control = _controller(gain=0.01)
    state = control.update(ControlState(0.0, (8.0, 0), -0.01), 7.96, 4, SPEED)  # 4 steps at -0.01
    assert state.velocity == pytest.approx(0.8 * -0.01 + 0.2 * -0.01)
    state = control.update(ControlState(0.0, (8.0, 0), 0.0), 7.99, 2, SPEED)
    assert state.velocity == pytest.approx(0.2 * -0.005)
    error = (-0.001 - -SPEED) / SPEED  # too slow: λ rises, for each of the 2 steps
    assert state.log_lambda == pytest.approx(0.01 * error * 2)


def test_log_lambda_is_clipped_to_the_range():
    control = _controller(low=1e-3, high=1.0, gain=1.0)
    up = control.update(ControlState(math.log(0.9), (8.0, 0)), 8.0, 5, SPEED)
    assert up.log_lambda == pytest.approx(0.0)
    down = control.update(ControlState(math.log(2e-3), (8.0, 0)), 7.0, 5, SPEED)
    assert down.log_lambda == pytest.approx(math.log(1e-3))


def _simulate(control, steps, regularization=0.05, average=8.0, pull=0.002, max_speed=0.02):
    """A toy training run: the bit loss pushes the average down at a speed that grows
    with λ (at most ``max_speed``, Adam's step, faster than SPEED), the task loss pulls
    it up by ``pull`` bits per step."""
    state = control.start(regularization, average, 0)
    path = []
    for step in range(1, steps + 1):
        lam = control.regularization(state.log_lambda)
        average += pull - max_speed * lam / (lam + 0.05)
        state = control.update(state, average, step, SPEED)
        path.append(average)
    return path, state


@pytest.mark.parametrize("target", [3.0, 6.0])
def test_closed_loop_settles_at_the_target_without_overshoot(target):
    control = _controller(target=target)
    path, state = _simulate(control, 3000)
    assert abs(path[-1] - target) < 1e-3
    assert min(path) > target - 0.01  # no overshoot worth the name
    # λ settles where the bit loss's push balances the pull: 0.02 · λ / (λ + 0.05) = 0.002.
    assert math.exp(state.log_lambda) == pytest.approx(0.05 / 9, rel=1e-3)


def test_closed_loop_lambda_falls_below_the_target():
    control = _controller(target=6.0)
    path, state = _simulate(control, 4000, regularization=5.0, average=5.0)
    assert abs(path[-1] - 6.0) < 1e-3
    assert math.exp(state.log_lambda) == pytest.approx(0.05 / 9, rel=1e-3)
