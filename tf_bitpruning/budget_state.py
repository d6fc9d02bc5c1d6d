"""BitBudget's state, which checkpoints itself with the model.

:class:`BudgetState` holds what ``BitBudget`` carries between batches and epochs:
the λ controller's state, the annealing schedule and two counters, as Python values
(read every batch). A copy in one float64 variable, tracked on the bit loss as
``bit_loss.budget_state``, travels with the model in checkpoints
(``tf.train.Checkpoint``, ``save_weights``, ``BackupAndRestore``, Keras 3 ``.keras``
files through ``BitPrunedModel``), so a resumed ``fit`` continues the same λ path
and annealing. float64 holds Python floats exactly; NaN stands for None. The
layout (unchanged, so older checkpoints restore) is :data:`LAYOUT`.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import tensorflow as tf

from tf_bitpruning.budget_anneal import AnnealSchedule
from tf_bitpruning.budget_control import ControlState

# The variable's entries; "stored" is 1 once a state was written.
LAYOUT = ("stored", "log_lambda", "last_average", "velocity", "met_epochs", "anneal_begin", "anneal_epochs",
          "steps_per_epoch", "last_step")


def _number(value) -> float:
    return np.nan if value is None else float(value)


def _optional(value: float) -> Optional[float]:
    return None if math.isnan(value) else float(value)


class BudgetState:
    """BitBudget's state and its checkpointed copy (a variable on the bit loss)."""

    def __init__(self):
        self.control = ControlState(0.0)
        self.schedule = AnnealSchedule()
        self.met_epochs = 0  # consecutive epochs that ended within the tolerance of the target
        self.steps_per_epoch: Optional[int] = None  # counted in the last complete epoch
        self.variable: Optional[tf.Variable] = None
        self._written: Optional[np.ndarray] = None  # what save() last stored

    def track(self, bit_loss) -> None:
        """Makes the copy a variable of ``bit_loss`` (a ``costs.BitLoss``), so that
        the model's checkpoints carry it; a checkpoint restored into the model before
        this call restores it now (deferred restoration)."""
        if self.variable is not None and getattr(bit_loss, "budget_state", None) is self.variable:
            return
        self.variable = tf.Variable(np.full(len(LAYOUT), np.nan), dtype=tf.float64,
                                    trainable=False, name="bit_budget_state")
        self._written = None
        bit_loss.budget_state = self.variable  # tracked: BitLoss is a tf.Module

    def to_vector(self) -> np.ndarray:
        """The state as the variable stores it (see :data:`LAYOUT`)."""
        c, s = self.control, self.schedule
        last = c.last if c.last is not None else (None, None)
        return np.array([1.0] + [_number(v) for v in (
            c.log_lambda, last[0], c.velocity, self.met_epochs, s.begin, s.epochs, self.steps_per_epoch,
            last[1])], np.float64)

    def load_vector(self, vector: np.ndarray) -> None:
        """Takes over a state that :meth:`to_vector` made."""
        (_, log_lambda, last_average, velocity, met_epochs, begin, epochs, steps_per_epoch,
         last_step) = (_optional(v) for v in vector)
        last = None if last_average is None or last_step is None else (last_average, int(last_step))
        self.control = ControlState(log_lambda, last, velocity)
        self.schedule = AnnealSchedule(begin, epochs)
        self.met_epochs = 0 if met_epochs is None else int(met_epochs)
        self.steps_per_epoch = None if steps_per_epoch is None else int(steps_per_epoch)

    def save(self) -> None:
        """Writes the state into the variable (once tracked)."""
        if self.variable is not None:
            self._written = self.to_vector()
            self.variable.assign(self._written)

    def resume(self) -> bool:
        """Takes over a state that a checkpoint restored into the variable (it differs
        from what :meth:`save` wrote); returns whether it did."""
        if self.variable is None:
            return False
        saved = self.variable.numpy()
        if saved[0] != 1.0 or (self._written is not None and np.array_equal(saved, self._written, equal_nan=True)):
            return False
        self.load_vector(saved)
        self._written = saved
        return True
