"""BitBudget's λ controller: the control law alone, in plain Python (no TensorFlow, no Keras).

Measured after every training batch, the average bitlength ``R`` should follow a
reference path to the target and settle there. λ (the bit loss's ``regularization``)
moves multiplicatively (in log space):

    v*  = -clip((R - target) / settle_steps, -speed, speed)   desired bits per step
    v   = smoothed measured change of R per step
    e   = clip((v - v*) / max(|v*|, speed_floor · speed), -1, 1)   relative speed error
    log λ ← clip(log λ + gain · e · steps, log low, log high)

Why a path and not λ ∝ error: with Adam each bitlength moves at most about
``bits_lr_multiplier · lr`` per step (~0.01 bit) however large λ is. A λ far above
what that speed needs buys nothing, but its huge gradients fill Adam's second
moment and then freeze the bitlengths for thousands of steps: the average
overshoots the target and cannot come back. Asking for a bit less than the
maximum speed keeps λ near the balance between task and bit loss; near the
target the desired speed falls with the error (no overshoot); at the target it
is 0, so λ settles where the bitlengths stop moving. Below the target λ falls
until the task loss pulls the bitlengths back up. Since the update is an
integral of a speed error, λ has no wind-up from the initial distance, and the
clip keeps it positive and finite.

>>> control = LambdaController(target=4.0, low=1e-5, high=10.0)
>>> state = control.start(0.05, average=8.0, step=0)
>>> state = control.update(state, average=7.99, step=1, speed=0.008)  # faster than asked
>>> state.log_lambda < math.log(0.05)  # so λ falls
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple

import numpy as np


class ControlState(NamedTuple):
    """What the control law carries from one measurement to the next."""

    log_lambda: float
    last: Optional[Tuple[float, int]] = None  # (average, step) of the last measurement
    velocity: Optional[float] = None  # smoothed change of the average, bits per step


@dataclass(frozen=True)
class LambdaController:
    """The control law, for one target and λ range (``0 < low < high``)."""

    target: float
    low: float
    high: float
    settle_steps: float = 100.0  # time constant of the error near the target, steps
    gain: float = 0.03  # log-λ change per step at full relative speed error
    speed_floor: float = 0.25  # the error's scale never falls under this share of ``speed``

    def __post_init__(self):
        if not 0 < self.low < self.high < math.inf:
            raise ValueError(f"LambdaController: need 0 < low < high < inf, got {self.low}, {self.high}.")
        if not (self.settle_steps > 0 and self.gain > 0):
            raise ValueError("LambdaController: settle_steps and gain must be > 0.")

    def regularization(self, log_lambda: float) -> float:
        """λ for ``log_lambda``, clipped to ``[low, high]``."""
        return float(np.clip(math.exp(log_lambda), self.low, self.high))

    def start(self, regularization: float, average: float, step: int) -> ControlState:
        """A fresh path from λ = ``regularization`` (clipped to ``[low, high]``) and a
        first measurement: ``average`` bits at training step ``step``."""
        start = float(np.clip(regularization, self.low, self.high))
        return ControlState(math.log(start), (average, step))

    def desired_speed(self, average: float, speed: float) -> float:
        """``v*``: the change of the average per step that the path asks for."""
        return -float(np.clip((average - self.target) / self.settle_steps, -speed, speed))

    def update(self, state: ControlState, average: float, step: int, speed: float) -> ControlState:
        """The state after measuring ``average`` bits at training step ``step``;
        ``speed``: the fastest approach to ask for, bits per step. A non-finite
        average changes nothing; a first measurement, or one without a step since
        the last, only becomes the new reference."""
        if not math.isfinite(average):
            return state
        if state.last is None:
            return state._replace(last=(average, step))
        last_average, last_step = state.last
        steps = step - last_step
        if steps <= 0:
            return state._replace(last=(average, step))
        velocity = (average - last_average) / steps
        if state.velocity is not None:
            velocity = 0.8 * state.velocity + 0.2 * velocity
        desired = self.desired_speed(average, speed)
        # Relative to the desired speed: near the target, where λ must move by
        # orders of magnitude to change a slow drift, the error is not tiny.
        scale = max(abs(desired), self.speed_floor * speed)
        error = float(np.clip((velocity - desired) / scale, -1.0, 1.0))
        low, high = math.log(self.low), math.log(self.high)
        log_lambda = float(np.clip(state.log_lambda + self.gain * error * steps, low, high))
        return ControlState(log_lambda, (average, step), velocity)
