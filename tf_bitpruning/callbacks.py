"""Train to a bit budget: a Keras callback that adapts λ during ``fit``.

Users think in budgets ("4 bits on average"), not in λ. :class:`BitBudget`
measures the average bitlength ``R`` after every training batch and moves λ (the
bit loss's ``regularization`` variable) multiplicatively (in log space), so that
``R`` follows a reference path to the target and settles there:

    v*  = -clip((R - target) / settle_steps, -speed, speed)   desired bits per step
    v   = smoothed measured change of R per step
    e   = clip((v - v*) / max(|v*|, speed / 4), -1, 1)        relative speed error
    log λ ← clip(log λ + gain · e, log low, log high)

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
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tf_bitpruning import costs, rounding, tensorboard
from tf_bitpruning.budget_state import CheckpointedState


def bits_range(tensors: List[costs.QuantizedTensor], weighting: str = "uniform",
               kind: Optional[str] = None) -> Tuple[float, float]:
    """The lowest and highest average bitlength the tensors can reach: every
    bitlength at its quantizer's ``min_bits``, respectively ``max_bits``."""
    return tuple(float(costs.average_bits_tensor(tensors, weighting, kind,
                                                 bits=lambda t, end=end: float(getattr(t.quantizer, end))))
                 for end in ("min_bits", "max_bits"))


def _learning_rate(optimizer) -> Optional[float]:
    """The optimizer's current learning rate, or None if it has none."""
    lr = getattr(optimizer, "learning_rate", None)
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        lr = lr(optimizer.iterations)
    try:
        return float(lr)
    except (TypeError, ValueError):
        return None


class BitBudget(keras.callbacks.Callback):
    """Adapts λ during ``fit`` so that the model's average bitlength settles at
    ``target_bits``; logs the bitlengths; optionally stops once the budget is met.

    Put it first in ``callbacks=[...]`` so that callbacks after it (``EarlyStopping``,
    ``ModelCheckpoint``, Keras' ``TensorBoard``) see the values it adds to ``logs``:
    ``avg_bits`` (the controlled average), ``avg_weight_bits``,
    ``avg_activation_bits`` (weighted like ``weighting``; uniform for ``"bops"``)
    and ``bit_lambda`` (λ). The progress bar shows their running mean over the
    epoch; ``History`` records the value at each epoch end.

    Its control state (the λ path, counters, annealing schedule) is a variable of
    the bit loss, so checkpoints of the model carry it: a run resumed with
    ``keras.callbacks.BackupAndRestore`` or from a ``tf.train.Checkpoint`` continues
    the same path (exactly, with epoch-end saves and op determinism).

    The learning phase ends at integer bitlengths within the budget: when the
    last ``anneal`` share of the training steps begins, every bitlength gets an
    integer (rounded up, then the cheapest lowered until the average is at or
    under ``target_bits``: ``rounding.fit_budget``), and over those steps each
    ``n`` slides linearly to its integer while the weights adapt; λ is held.
    ``fit`` thus leaves the integer model that ``freeze_bitlengths`` makes, at
    or under the budget, and freezing costs no accuracy.

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

    def __init__(self, target_bits: float, weighting: str = "uniform", kind: Optional[str] = None,
                 log_dir: Optional[str] = None, stop_when_met: bool = False, patience: int = 2,
                 tolerance: float = 0.1, initial_regularization: Optional[float] = None,
                 regularization_range: Tuple[float, float] = (1e-5, 10.0),
                 speed: Optional[float] = None, settle_steps: float = 100.0, gain: float = 0.03,
                 anneal: float = 0.25, calibration_data=None, verbose: int = 0):
        super().__init__()
        target_bits = rounding.check_target(target_bits, "BitBudget")
        costs.check_weighting(weighting)
        if kind not in costs.KINDS:
            raise ValueError(f"BitBudget: kind must be one of {costs.KINDS}, got {kind!r}.")
        if weighting == "bops" and kind == "activations":
            raise ValueError("BitBudget: weighting='bops' is a cost of kernels and their inputs; "
                             "use kind=None or kind='weights'.")
        low, high = (float(r) for r in regularization_range)
        if not (0 < low < high and math.isfinite(high)):
            raise ValueError(f"BitBudget: regularization_range must be (low, high) with "
                             f"0 < low < high < inf, got {regularization_range!r}.")
        if initial_regularization is not None:
            costs.check_regularization(initial_regularization)
        if int(patience) < 1:
            raise ValueError(f"BitBudget: patience must be >= 1, got {patience}.")
        if not float(tolerance) > 0:
            raise ValueError(f"BitBudget: tolerance must be > 0 bits, got {tolerance}.")
        if speed is not None and not (math.isfinite(float(speed)) and float(speed) > 0):
            raise ValueError(f"BitBudget: speed must be a number of bits per step > 0, got {speed}.")
        if not (math.isfinite(float(settle_steps)) and float(settle_steps) > 0):
            raise ValueError(f"BitBudget: settle_steps must be > 0, got {settle_steps}.")
        if not (math.isfinite(float(gain)) and float(gain) > 0):
            raise ValueError(f"BitBudget: gain must be > 0, got {gain}.")
        if not 0.0 <= float(anneal) < 1.0:
            raise ValueError(f"BitBudget: anneal must be a share of the training steps in [0, 1), got {anneal}.")
        self.target_bits = target_bits
        self.weighting = weighting
        self.kind = kind
        self.log_dir = log_dir
        self.stop_when_met = bool(stop_when_met)
        self.patience = int(patience)
        self.tolerance = float(tolerance)
        self.initial_regularization = initial_regularization
        self.regularization_range = (low, high)
        self.speed = None if speed is None else float(speed)
        self.settle_steps = float(settle_steps)
        self.gain = float(gain)
        self.anneal = float(anneal)
        self.calibration_data = calibration_data
        self.speed_floor = 0.25
        self.verbose = int(verbose)
        self.stopped_epoch: Optional[int] = None
        self._bit_loss = None
        self._tensors: List[costs.QuantizedTensor] = []
        self._log_lambda = 0.0
        self._speed = 0.01
        self._step = 0
        self._last: Optional[Tuple[float, int]] = None
        self._velocity: Optional[float] = None
        self._met_epochs = 0
        self._writer = None
        self._measure_fn = None
        self._anneal_begin = math.inf  # in epochs (epoch index + share of its steps)
        self._anneal_epochs = 0.0
        self._steps_per_epoch: Optional[int] = None
        self._epoch = 0
        self._batches = 0
        self._annealing = False  # this batch trains with an anneal weight > 0
        self._state = CheckpointedState(self)

    # -- setup ---------------------------------------------------------------
    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        bit_loss = costs.get_bit_loss(model)
        tensors = costs.quantized_tensors(model)
        if bit_loss is None:
            hint = ("it has learned bitlengths but no bit loss: call "
                    "tf_bitpruning.costs.attach_bit_loss(model, regularization)" if tensors else
                    "make it with tfbp.bitprune_model(model) first")
            raise ValueError(f"BitBudget: model '{model.name}' is not bit-pruned ({hint}).")
        if all(t.quantizer.frozen for t in bit_loss.tensors):
            raise ValueError(f"BitBudget: the bitlengths of model '{model.name}' are frozen, so no λ can "
                             f"move them. Use BitBudget in the learning phase (before freeze_bitlengths).")
        controlled = costs.select(bit_loss.tensors, self.kind) if self.weighting != "bops" else bit_loss.tensors
        if not controlled:
            raise ValueError(f"BitBudget: model '{model.name}' has no quantized {self.kind} "
                             f"with a learned bitlength.")
        low, high = bits_range(bit_loss.tensors, self.weighting, self.kind)
        if not low - 1e-6 <= self.target_bits <= high + 1e-6:
            raise ValueError(
                f"BitBudget: target_bits={self.target_bits} cannot be reached: with "
                f"weighting={self.weighting!r}{'' if self.kind is None else f', kind={self.kind!r}'} the "
                f"average bitlength of model '{model.name}' lies in [{low:.3g}, {high:.3g}] (every tensor at "
                f"its quantizer's min_bits, respectively max_bits). Choose a target in that range, or "
                f"change weight_bits/activation_bits in bitprune_model.")
        self._bit_loss = bit_loss
        self._tensors = bit_loss.tensors
        changed = (bit_loss.weighting, getattr(bit_loss, "kind", None)) != (self.weighting, self.kind)
        bit_loss.weighting = self.weighting
        bit_loss.kind = self.kind
        if bit_loss.anneal(self.anneal > 0):
            changed = True
        if changed:
            # The bit loss (and the annealed bitlength) is traced into the model's
            # functions: trace them again.
            model.train_function = None
            model.test_function = None
            model.predict_function = None
        self._measure_fn = None
        self._state.track(bit_loss)

    def _measure(self) -> Dict[str, float]:
        """``avg_bits`` (controlled), ``avg_weight_bits``, ``avg_activation_bits``."""
        if self._measure_fn is None:
            tensors, weighting, kind = self._tensors, self.weighting, self.kind
            part = "uniform" if weighting == "bops" else weighting
            has = {k: any(t.kind == k for t in tensors) for k in ("weights", "activations")}

            optimizer = getattr(self.model, "optimizer", None)
            iterations = getattr(optimizer, "iterations", None)

            @tf.function(autograph=False)
            def measure():
                nan = tf.constant(float("nan"))
                step = tf.cast(iterations, tf.float32) if iterations is not None else nan
                return tf.stack([step,
                    costs.average_bits_tensor(tensors, weighting, kind),
                    costs.average_bits_tensor(tensors, part, "weights") if has["weights"] else nan,
                    costs.average_bits_tensor(tensors, part, "activations") if has["activations"] else nan,
                ])

            self._measure_fn = measure
        step, avg, w, a = (float(v) for v in self._measure_fn().numpy())
        self._step = int(step) if math.isfinite(step) else self._step + 1
        return {"avg_bits": avg, "avg_weight_bits": w, "avg_activation_bits": a}

    def _assign(self, log_lambda: float) -> float:
        low, high = self.regularization_range
        value = float(np.clip(math.exp(log_lambda), low, high))
        self._bit_loss.regularization.assign(value)
        return value

    def on_train_begin(self, logs=None):
        low, high = self.regularization_range
        start = self.initial_regularization
        if start is None:
            start = float(self._bit_loss.regularization.numpy())
        start = float(np.clip(start, low, high))
        self._log_lambda = math.log(start)
        self._last, self._velocity = None, None
        self._met_epochs = 0
        self.stopped_epoch = None
        self._assign(self._log_lambda)
        # Traces the measurement now (not inside the first batch) and sets the baseline.
        self._last = (self._measure()["avg_bits"], self._step)
        if self.log_dir and self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "bitpruning"))
        self._schedule_anneal()
        if not self._resume_state():
            self._state.save()

    # -- annealing -------------------------------------------------------------
    def _schedule_anneal(self) -> None:
        """Annealing covers the last ``anneal`` share of the planned epochs (in
        absolute epoch indices, so a resumed ``fit`` continues the same schedule)."""
        epochs = self.params.get("epochs") if self.params else None
        self._anneal_begin, self._anneal_epochs = math.inf, 0.0
        if self.anneal > 0 and epochs and not self.stop_when_met:
            self._anneal_epochs = self.anneal * epochs
            self._anneal_begin = epochs - self._anneal_epochs

    def anneal_progress(self, epoch: int, batch: int) -> float:
        """Share of the annealing done after training step ``batch`` of ``epoch``."""
        if self._anneal_epochs <= 0:
            return 0.0
        steps = (self.params or {}).get("steps") or self._steps_per_epoch
        position = epoch + ((batch + 1) / steps if steps else 0.0)
        return float(np.clip((position - self._anneal_begin) / self._anneal_epochs, 0.0, 1.0))

    def on_train_batch_begin(self, batch, logs=None):
        self._annealing = False
        if self._anneal_epochs <= 0:
            return
        p = self.anneal_progress(self._epoch, batch)
        self._annealing = p > 0
        if p > 0 and float(self._bit_loss.anneal_weight.numpy()) == 0.0:
            self._choose_integers()
        self._bit_loss.anneal_weight.assign(p)

    def _choose_integers(self) -> None:
        """The integers annealing slides to: rounded up, then fitted to the budget
        (costs measured on ``calibration_data`` when given, see ``freeze_bitlengths``)."""
        learned = rounding.learned_bits(self._tensors)
        start = rounding.round_all(learned)
        cost = rounding.distance_cost(learned)
        slots = dict(zip(self._tensors, self._bit_loss.anneal_bits))

        def set_bits(t, b):
            slots[t].assign(np.reshape(start[t] if b is None else b, slots[t].shape))

        if self.calibration_data is not None:
            outputs = rounding.model_outputs(self.model, self.calibration_data)
            reference = outputs()  # the learned blend (anneal weight 0)
            for t in self._tensors:
                set_bits(t, None)
            self._bit_loss.anneal_weight.assign(1.0)  # the integer model
            cost = rounding.output_change_cost(outputs, reference, set_bits)
        bits = rounding.fit_budget(self._tensors, start, self.target_bits, self.weighting, self.kind, cost,
                                   learned=learned)
        for t in self._tensors:
            set_bits(t, bits[t])

    # -- control ---------------------------------------------------------------
    def _default_speed(self) -> float:
        """``0.8 · bits_lr_multiplier · learning_rate``: a bit below the Adam step of a bitlength."""
        k = float(np.mean([t.quantizer.bits_lr_multiplier for t in self._tensors]))
        lr = _learning_rate(getattr(self.model, "optimizer", None))
        return 0.8 * k * (lr if lr else 1e-3)

    def on_epoch_begin(self, epoch, logs=None):
        self._resume_state()  # a BackupAndRestore after this callback restores in its on_train_begin
        self._speed = self.speed if self.speed is not None else self._default_speed()
        self._epoch = epoch
        self._batches = 0

    def _update(self, avg: float, step: int) -> None:
        if not math.isfinite(avg):
            return
        if self._last is None:
            self._last = (avg, step)
            return
        last_avg, last_step = self._last
        self._last = (avg, step)
        steps = step - last_step
        if steps <= 0:
            return
        speed = self._speed
        velocity = (avg - last_avg) / steps
        self._velocity = velocity if self._velocity is None else 0.8 * self._velocity + 0.2 * velocity
        desired = -float(np.clip((avg - self.target_bits) / self.settle_steps, -speed, speed))
        # Relative to the desired speed: near the target, where λ must move by
        # orders of magnitude to change a slow drift, the error is not tiny.
        scale = max(abs(desired), self.speed_floor * speed)
        error = float(np.clip((self._velocity - desired) / scale, -1.0, 1.0))
        low, high = (math.log(r) for r in self.regularization_range)
        self._log_lambda = float(np.clip(self._log_lambda + self.gain * error * steps, low, high))
        self._assign(self._log_lambda)

    def on_train_batch_end(self, batch, logs=None):
        self._batches = batch + 1
        values = self._measure()
        if not self._annealing:  # λ is held while annealing
            self._update(values["avg_bits"], self._step)
        if logs is not None:
            logs.update(values, bit_lambda=float(self._bit_loss.regularization.numpy()))
        self._state.save()

    def on_epoch_end(self, epoch, logs=None):
        self._steps_per_epoch = self._batches or self._steps_per_epoch
        values = self._measure()
        lam = float(self._bit_loss.regularization.numpy())
        if logs is not None:
            logs.update(values, bit_lambda=lam)
        if self._writer is not None:
            tensorboard.write_bitlengths(self._writer, self._tensors, epoch, values, lam, self.target_bits)
        if abs(values["avg_bits"] - self.target_bits) <= self.tolerance:
            self._met_epochs += 1
        else:
            self._met_epochs = 0
        if self.stop_when_met and self._anneal_epochs > 0:
            if epoch + 1 >= self._anneal_begin + self._anneal_epochs:
                self._stop(epoch, "annealed to integer bitlengths")
        elif self.stop_when_met and self._met_epochs >= self.patience:
            message = (f"average bitlength {values['avg_bits']:.2f} within {self.tolerance} of the target "
                       f"{self.target_bits} for {self.patience} epoch(s)")
            if self.anneal > 0:
                self._anneal_begin = epoch + 1.0
                self._anneal_epochs = float(max(1, math.ceil(self.anneal * self.params.get("epochs", 1))))
                if self.verbose:
                    print(f"BitBudget: {message}; annealing to integer bitlengths for "
                          f"{int(self._anneal_epochs)} epoch(s).")
            else:
                self._stop(epoch, message)
        self._state.save()

    def _stop(self, epoch: int, why: str) -> None:
        self.model.stop_training = True
        self.stopped_epoch = epoch
        if self.verbose:
            print(f"BitBudget: {why}; stopping at epoch {epoch + 1}.")

    def on_train_end(self, logs=None):
        if self._anneal_epochs > 0 and self.anneal_progress(self._epoch, self._batches - 1) < 1.0:
            warnings.warn(f"BitBudget: training ended before the bitlengths were annealed to integers "
                          f"({100 * self.anneal_progress(self._epoch, self._batches - 1):.0f} % done); "
                          f"freezing may cost accuracy. Train the planned epochs, or fine-tune after "
                          f"freeze_bitlengths.", stacklevel=2)
        if float(self._bit_loss.anneal_weight.numpy()) >= 1.0:
            # Annealed: write the integers into the bitlengths themselves, so that the
            # model saved, reloaded (without this callback) or frozen has exactly them.
            for t, integer in zip(self._tensors, self._bit_loss.anneal_bits):
                t.bits_variable.assign(integer / t.quantizer.bits_lr_multiplier)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _resume_state(self) -> bool:
        """Takes over a state restored from a checkpoint (and its λ)."""
        if not self._state.resume():
            return False
        self._assign(self._log_lambda)
        return True
