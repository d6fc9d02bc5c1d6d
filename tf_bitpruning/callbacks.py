"""Train to a bit budget: :class:`BitBudget`, a Keras callback that adapts λ during ``fit``.

Users think in budgets ("4 bits on average"), not in λ. ``BitBudget`` measures the
average bitlength after every training batch and moves λ so that it follows a path
to the target and settles there. The callback only connects its parts to ``fit``:

- ``budget_control.LambdaController``: the control law that moves λ (plain Python);
- ``budget_anneal.AnnealSchedule``: when the bitlengths slide to integers (plain Python);
- ``budget_state.BudgetState``: their state, checkpointed with the model;
- ``budget_model.BudgetedModel``: the model's side (checks, measurement, λ, integers).

The state is a variable of the bit loss, so checkpoints of the model carry it: a run
resumed with ``keras.callbacks.BackupAndRestore`` or from a ``tf.train.Checkpoint``
continues the same path (exactly, with epoch-end saves and op determinism).

The learning phase ends at integer bitlengths within the budget: when the last
``anneal`` share of the training steps begins, every bitlength gets an integer
(rounded up, then the cheapest lowered until the average is at or under
``target_bits``: ``rounding.fit_budget``), and over those steps each ``n`` slides
linearly to its integer while the weights adapt; λ is held. ``fit`` thus leaves the
integer model that ``freeze_bitlengths`` makes, at or under the budget, and
freezing costs no accuracy.
"""

from __future__ import annotations

import os
import warnings
from typing import Dict, Optional, Tuple

import tensorflow as tf
import tf_keras as keras

from tf_bitpruning import tensorboard
from tf_bitpruning.budget_anneal import AnnealSchedule
from tf_bitpruning.budget_control import ControlState, LambdaController
from tf_bitpruning.budget_model import BudgetedModel, bits_range, check_arguments
from tf_bitpruning.budget_state import BudgetState

__all__ = ["BitBudget", "bits_range"]


class _StateField:
    """``BitBudget._<field>``: a field of its ``BudgetState`` (or of a record in it),
    under the name that the single-class ``BitBudget`` gave it."""

    def __init__(self, field: str, record: Optional[str] = None):
        self.field, self.record = field, record

    def __get__(self, budget, owner=None):
        if budget is None:
            return self
        holder = budget._state if self.record is None else getattr(budget._state, self.record)
        return getattr(holder, self.field)

    def __set__(self, budget, value) -> None:
        if self.record is None:
            setattr(budget._state, self.field, value)
        else:
            record = getattr(budget._state, self.record)
            setattr(budget._state, self.record, record._replace(**{self.field: value}))


class BitBudget(keras.callbacks.Callback):
    """Adapts λ during ``fit`` so that the model's average bitlength settles at
    ``target_bits``; anneals the bitlengths to integers; logs them; optionally
    stops once the budget is met (see the module's docstring).

    Put it first in ``callbacks=[...]`` so that callbacks after it (``EarlyStopping``,
    ``ModelCheckpoint``, Keras' ``TensorBoard``) see the values it adds to ``logs``:
    ``avg_bits`` (the controlled average), ``avg_weight_bits``,
    ``avg_activation_bits`` (weighted like ``weighting``; uniform for ``"bops"``)
    and ``bit_lambda`` (λ). The progress bar shows their running mean over the
    epoch; ``History`` records the value at each epoch end.

    Args:
      target_bits: the budget, an average bitlength (e.g. ``4.0``).
      weighting: how tensors are averaged: ``"uniform"`` (per tensor, the paper's
        metric), ``"memory"`` (per element) or ``"bops"`` (bit-operations). The
        attached bit loss is switched to this weighting (and to ``kind``).
      kind: ``None`` (all tensors), ``"weights"`` or ``"activations"``: which tensors
        the budget and the bit loss cover; the others are not regularized.
      log_dir: if given, write TensorBoard summaries every epoch to
        ``log_dir/bitpruning`` (next to Keras' ``log_dir/train`` and ``log_dir/validation``).
      stop_when_met: stop training once ``|avg_bits - target| <= tolerance`` at the
        end of ``patience`` consecutive epochs.
      patience, tolerance: see ``stop_when_met``; ``tolerance`` in bits.
      initial_regularization: λ at the start of training; default: the model's
        current λ (the ``regularization`` given to ``bitprune_model``).
      regularization_range: ``(low, high)`` bounds of λ (both > 0).
      speed: the fastest the average may approach the target, in bits per
        training step. Default ``0.8 · bits_lr_multiplier · learning_rate``, just
        under the Adam step of a bitlength (0.008 bit/step with the defaults).
        Must stay below the step the optimizer can make, else λ climbs to ``high``.
        When even that step cannot bring the average to the target before annealing
        (Adam at a constant rate), ``fit`` starts with a warning saying what would.
      settle_steps: near the target the error decays with this time constant
        (training steps); larger is slower and smoother.
      gain: log-λ change per step at full relative speed error (0.03: λ changes
        at most by a factor e in ~33 steps).
      anneal: the share of the training steps of each ``fit`` (its last ones) over
        which the bitlengths are pulled to integers; 0 keeps the blend to the end.
        With ``stop_when_met``, annealing starts once the budget is met and lasts
        ``anneal · epochs`` epochs (at least one), then training stops.
      calibration_data: optional inputs (a few hundred samples) on which the
        integers annealing slides to are chosen by the change of the model's
        outputs, as in ``freeze_bitlengths``; default: by the learned bitlengths alone.
      verbose: 1 prints a line when training is stopped.

    >>> budget = BitBudget(target_bits=4.0, log_dir="logs")  # doctest: +SKIP
    >>> model.fit(x, y, epochs=30, callbacks=[budget, keras.callbacks.TensorBoard("logs")])  # doctest: +SKIP
    """

    # The state's fields under their names in the single-class BitBudget (tests set them).
    _log_lambda, _last, _velocity = (_StateField(f, "control") for f in ControlState._fields)
    _anneal_begin, _anneal_epochs = (_StateField(f, "schedule") for f in AnnealSchedule._fields)
    _met_epochs, _steps_per_epoch = _StateField("met_epochs"), _StateField("steps_per_epoch")

    def __init__(self, target_bits: float, weighting: str = "uniform", kind: Optional[str] = None,
                 log_dir: Optional[str] = None, stop_when_met: bool = False, patience: int = 2,
                 tolerance: float = 0.1, initial_regularization: Optional[float] = None,
                 regularization_range: Tuple[float, float] = (1e-5, 10.0),
                 speed: Optional[float] = None, settle_steps: float = 100.0, gain: float = 0.03,
                 anneal: float = 0.25, calibration_data=None, verbose: int = 0):
        super().__init__()
        self.target_bits, self.regularization_range = check_arguments(
            target_bits, weighting, kind, regularization_range, initial_regularization, patience, tolerance,
            speed, settle_steps, gain, anneal)
        self.weighting, self.kind, self.log_dir = weighting, kind, log_dir
        self.stop_when_met, self.patience, self.tolerance = bool(stop_when_met), int(patience), float(tolerance)
        self.initial_regularization = initial_regularization
        self.speed = None if speed is None else float(speed)
        self.settle_steps, self.gain, self.anneal = float(settle_steps), float(gain), float(anneal)
        self.calibration_data, self.speed_floor, self.verbose = calibration_data, 0.25, int(verbose)
        self.stopped_epoch: Optional[int] = None
        self._state = BudgetState()
        self._budgeted: Optional[BudgetedModel] = None  # set by set_model
        self._speed, self._step = 0.01, 0  # this epoch's speed; the step of the last measurement
        self._epoch, self._batches = 0, 0  # the current epoch and its batches so far
        self._annealing = False  # this batch trains with an anneal weight > 0
        self._writer = None

    @property
    def _controller(self) -> LambdaController:
        """The control law for the current (public, changeable) settings."""
        low, high = self.regularization_range
        return LambdaController(self.target_bits, low, high, self.settle_steps, self.gain, self.speed_floor)

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        self._budgeted = BudgetedModel(model, self.target_bits, self.weighting, self.kind, self.anneal > 0)
        self._state.track(self._budgeted.bit_loss)

    def _measure(self) -> Dict[str, float]:
        step, values = self._budgeted.measure()
        self._step = step if step is not None else self._step + 1
        return values

    def _assign(self, log_lambda: float) -> float:
        value = self._controller.regularization(log_lambda)
        self._budgeted.regularization = value
        return value

    def _resume_state(self) -> bool:
        """Takes over a state restored from a checkpoint (and its λ)."""
        if not self._state.resume():
            return False
        self._assign(self._state.control.log_lambda)
        return True

    def on_train_begin(self, logs=None):
        start = self.initial_regularization
        if start is None:
            start = self._budgeted.regularization
        self._state.met_epochs, self.stopped_epoch = 0, None
        # Traces the measurement now (not inside the first batch) and sets the baseline.
        average = self._measure()["avg_bits"]
        self._state.control = self._controller.start(start, average, self._step)
        self._assign(self._state.control.log_lambda)
        self._warn_if_out_of_reach(average)
        if self.log_dir and self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "bitpruning"))
        epochs = self.params.get("epochs") if self.params else None
        self._state.schedule = AnnealSchedule.planned(self.anneal, epochs, self.stop_when_met)
        if not self._resume_state():
            self._state.save()

    def _warn_if_out_of_reach(self, average: float) -> None:
        params = self.params or {}
        if self.stop_when_met or not (params.get("epochs") and params.get("steps")):
            return
        steps = int(params["epochs"] * params["steps"] * (1.0 - self.anneal))
        message = self._budgeted.reach_warning(average, self.target_bits, self.tolerance, steps, self.anneal)
        if message:
            warnings.warn(message, stacklevel=3)

    def on_epoch_begin(self, epoch, logs=None):
        self._resume_state()  # a BackupAndRestore after this callback restores in its on_train_begin
        self._speed = self.speed if self.speed is not None else self._budgeted.default_speed()
        self._epoch, self._batches = epoch, 0

    def anneal_progress(self, epoch: int, batch: int) -> float:
        """Share of the annealing done after training step ``batch`` of ``epoch``."""
        steps = (self.params or {}).get("steps") or self._state.steps_per_epoch
        return self._state.schedule.progress(epoch, batch, steps)

    def on_train_batch_begin(self, batch, logs=None):
        self._annealing = False
        if not self._state.schedule.active:
            return
        p = self.anneal_progress(self._epoch, batch)
        self._annealing = p > 0
        if p > 0 and self._budgeted.anneal_weight == 0.0:
            self._budgeted.choose_integers(self.target_bits, self.calibration_data)
        self._budgeted.anneal_weight = p

    def on_train_batch_end(self, batch, logs=None):
        self._batches = batch + 1
        values = self._measure()
        if not self._annealing:  # λ is held while annealing
            before = self._state.control
            self._state.control = self._controller.update(before, values["avg_bits"], self._step, self._speed)
            if self._state.control.log_lambda != before.log_lambda:
                self._assign(self._state.control.log_lambda)
        if logs is not None:
            logs.update(values, bit_lambda=self._budgeted.regularization)
        self._state.save()

    def on_epoch_end(self, epoch, logs=None):
        state = self._state
        state.steps_per_epoch = self._batches or state.steps_per_epoch
        values, lam = self._measure(), self._budgeted.regularization
        if logs is not None:
            logs.update(values, bit_lambda=lam)
        if self._writer is not None:
            tensorboard.write_bitlengths(self._writer, self._budgeted.tensors, epoch, values, lam, self.target_bits)
        met = abs(values["avg_bits"] - self.target_bits) <= self.tolerance
        state.met_epochs = state.met_epochs + 1 if met else 0
        if self.stop_when_met and state.schedule.active:
            if state.schedule.done_after(epoch):
                self._stop(epoch, "annealed to integer bitlengths")
        elif self.stop_when_met and state.met_epochs >= self.patience:
            message = (f"average bitlength {values['avg_bits']:.2f} within {self.tolerance} of the target "
                       f"{self.target_bits} for {self.patience} epoch(s)")
            if self.anneal > 0:
                state.schedule = AnnealSchedule.after_met(self.anneal, epoch, self.params.get("epochs", 1))
                if self.verbose:
                    print(f"BitBudget: {message}; annealing to integer bitlengths for "
                          f"{int(state.schedule.epochs)} epoch(s).")
            else:
                self._stop(epoch, message)
        state.save()

    def _stop(self, epoch: int, why: str) -> None:
        self.model.stop_training = True
        self.stopped_epoch = epoch
        if self.verbose:
            print(f"BitBudget: {why}; stopping at epoch {epoch + 1}.")

    def on_train_end(self, logs=None):
        done = self.anneal_progress(self._epoch, self._batches - 1)
        if self._state.schedule.active and done < 1.0:
            warnings.warn(f"BitBudget: training ended before the bitlengths were annealed to integers "
                          f"({100 * done:.0f} % done); freezing may cost accuracy. Train the planned "
                          f"epochs, or fine-tune after freeze_bitlengths.", stacklevel=2)
        if self._budgeted.anneal_weight >= 1.0:
            self._budgeted.write_integers()  # the model saved, reloaded or frozen has exactly them
        if self._writer is not None:
            self._writer.close()
            self._writer = None
