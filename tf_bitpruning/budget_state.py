"""BitBudget's control state, checkpointed with the model.

The state lives in the callback's Python attributes (read every batch). A copy in
one float64 variable tracked on the bit loss (``bit_loss.budget_state``) travels
with the model in checkpoints (``BackupAndRestore``, ``tf.train.Checkpoint``,
``save_weights``), so a resumed ``fit`` continues the same λ path and annealing.
float64 holds Python floats exactly; NaN stands for None. Layout:
``[1 (a stored state), *FIELDS, last step]``.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import tensorflow as tf

from tf_bitpruning import costs

# "_last" is (average, step); the step is stored at the end of the vector.
FIELDS = ("_log_lambda", "_last", "_velocity", "_met_epochs", "_anneal_begin", "_anneal_epochs",
          "_steps_per_epoch")
_INTEGERS = ("_met_epochs", "_steps_per_epoch")


class CheckpointedState:
    """Copies ``FIELDS`` of ``owner`` (a ``BitBudget``) into a tracked variable and back."""

    def __init__(self, owner: Any):
        self.owner = owner
        self.variable: Optional[tf.Variable] = None
        self._written: Optional[np.ndarray] = None  # what the owner last stored

    def track(self, bit_loss: costs.BitLoss) -> None:
        if self.variable is not None and getattr(bit_loss, "budget_state", None) is self.variable:
            return
        self.variable = tf.Variable(np.full(len(FIELDS) + 2, np.nan), dtype=tf.float64,
                                    trainable=False, name="bit_budget_state")
        self._written = None
        # Tracked (a tf.Module attribute): checkpoints of the model save it, and a
        # checkpoint restored before fit() restores it here (deferred restoration).
        bit_loss.budget_state = self.variable

    def _vector(self) -> np.ndarray:
        def number(v):
            return np.nan if v is None else float(v)

        last = self.owner._last if self.owner._last is not None else (None, None)
        values = [number(getattr(self.owner, f)) for f in FIELDS if f != "_last"]
        values.insert(FIELDS.index("_last"), number(last[0]))
        return np.array([1.0] + values + [number(last[1])], np.float64)

    def _load(self, vector: np.ndarray) -> None:
        values = [None if math.isnan(v) else float(v) for v in vector[1:]]
        last_step = values.pop()
        for field, value in zip(FIELDS, values):
            if field == "_last":
                value = None if value is None or last_step is None else (value, int(last_step))
            elif field in _INTEGERS and value is not None:
                value = int(value)
            setattr(self.owner, field, value)
        if self.owner._met_epochs is None:
            self.owner._met_epochs = 0

    def save(self) -> None:
        if self.variable is not None:
            self._written = self._vector()
            self.variable.assign(self._written)

    def resume(self) -> bool:
        """Takes over a state that a checkpoint restored into the variable (it differs
        from what the owner stored); returns whether it did."""
        if self.variable is None:
            return False
        saved = self.variable.numpy()
        if saved[0] != 1.0 or (self._written is not None and np.array_equal(saved, self._written, equal_nan=True)):
            return False
        self._load(saved)
        self._written = saved
        return True
