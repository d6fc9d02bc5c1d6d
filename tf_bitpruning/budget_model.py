"""The model as ``BitBudget`` sees it: checks, measurement and the bit loss's variables.

Everything of ``BitBudget`` that touches TensorFlow or Keras, besides the callback
hooks themselves: the checks of its arguments and of the model, the traced
measurement of the average bitlengths, λ and the annealing variables of the bit
loss, the default speed and the choice of the integers annealing slides to.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tf_bitpruning import costs, rounding


def bits_range(tensors: List[costs.QuantizedTensor], weighting: str = "uniform",
               kind: Optional[str] = None) -> Tuple[float, float]:
    """The lowest and highest average bitlength the tensors can reach: every
    bitlength at its quantizer's ``min_bits``, respectively ``max_bits``."""
    return tuple(float(costs.average_bits_tensor(tensors, weighting, kind,
                                                 bits=lambda t, end=end: float(getattr(t.quantizer, end))))
                 for end in ("min_bits", "max_bits"))


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"BitBudget: {message}")


def _positive(value) -> bool:
    return math.isfinite(float(value)) and float(value) > 0


def check_arguments(target_bits, weighting: str, kind: Optional[str], regularization_range,
                    initial_regularization, patience, tolerance, speed, settle_steps, gain,
                    anneal) -> Tuple[float, Tuple[float, float]]:
    """Raises a ``ValueError`` for the first bad ``BitBudget`` argument; returns the
    target and the λ range as floats."""
    target_bits = rounding.check_target(target_bits, "BitBudget")
    costs.check_weighting(weighting)
    _require(kind in costs.KINDS, f"kind must be one of {costs.KINDS}, got {kind!r}.")
    _require(not (weighting == "bops" and kind == "activations"),
             "weighting='bops' is a cost of kernels and their inputs; use kind=None or kind='weights'.")
    low, high = (float(r) for r in regularization_range)
    _require(0 < low < high and math.isfinite(high), f"regularization_range must be (low, high) with "
             f"0 < low < high < inf, got {regularization_range!r}.")
    if initial_regularization is not None:
        costs.check_regularization(initial_regularization)
    _require(int(patience) >= 1, f"patience must be >= 1, got {patience}.")
    _require(float(tolerance) > 0, f"tolerance must be > 0 bits, got {tolerance}.")
    _require(speed is None or _positive(speed), f"speed must be a number of bits per step > 0, got {speed}.")
    _require(_positive(settle_steps), f"settle_steps must be > 0, got {settle_steps}.")
    _require(_positive(gain), f"gain must be > 0, got {gain}.")
    _require(0.0 <= float(anneal) < 1.0, f"anneal must be a share of the training steps in [0, 1), got {anneal}.")
    return target_bits, (low, high)


def controlled_bit_loss(model, target_bits: float, weighting: str, kind: Optional[str]) -> costs.BitLoss:
    """``model``'s bit loss, or a ``ValueError`` if ``BitBudget`` cannot steer it to the target."""
    bit_loss = costs.get_bit_loss(model)
    if bit_loss is None:
        hint = ("it has learned bitlengths but no bit loss: call "
                "tf_bitpruning.costs.attach_bit_loss(model, regularization)" if costs.quantized_tensors(model) else
                "make it with tfbp.bitprune_model(model) first")
        raise ValueError(f"BitBudget: model '{model.name}' is not bit-pruned ({hint}).")
    if all(t.quantizer.frozen for t in bit_loss.tensors):
        raise ValueError(f"BitBudget: the bitlengths of model '{model.name}' are frozen, so no λ can "
                         f"move them. Use BitBudget in the learning phase (before freeze_bitlengths).")
    controlled = costs.select(bit_loss.tensors, kind) if weighting != "bops" else bit_loss.tensors
    if not controlled:
        raise ValueError(f"BitBudget: model '{model.name}' has no quantized {kind} "
                         f"with a learned bitlength.")
    low, high = bits_range(bit_loss.tensors, weighting, kind)
    if not low - 1e-6 <= target_bits <= high + 1e-6:
        raise ValueError(
            f"BitBudget: target_bits={target_bits} cannot be reached: with "
            f"weighting={weighting!r}{'' if kind is None else f', kind={kind!r}'} the "
            f"average bitlength of model '{model.name}' lies in [{low:.3g}, {high:.3g}] (every tensor at "
            f"its quantizer's min_bits, respectively max_bits). Choose a target in that range, or "
            f"change weight_bits/activation_bits in bitprune_model.")
    return bit_loss


def _learning_rate(optimizer) -> Optional[float]:
    """The optimizer's current learning rate, or None if it has none."""
    lr = getattr(optimizer, "learning_rate", None)
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        lr = lr(optimizer.iterations)
    try:
        return float(lr)
    except (TypeError, ValueError):
        return None


class BudgetedModel:
    """A bit-pruned model under ``BitBudget``: its bit loss switched to the budget's
    ``weighting`` and ``kind`` (and annealing), measured and steered through it."""

    def __init__(self, model, target_bits: float, weighting: str, kind: Optional[str], anneal: bool):
        bit_loss = controlled_bit_loss(model, target_bits, weighting, kind)
        self.model, self.bit_loss, self.tensors = model, bit_loss, bit_loss.tensors
        self.weighting, self.kind = weighting, kind
        changed = (bit_loss.weighting, getattr(bit_loss, "kind", None)) != (weighting, kind)
        bit_loss.weighting, bit_loss.kind = weighting, kind
        if bit_loss.anneal(anneal) or changed:
            # The bit loss (and the annealed bitlength) is traced into the model's functions: trace again.
            model.train_function = model.test_function = model.predict_function = None
        self._measure = None

    def measure(self) -> Tuple[Optional[int], Dict[str, float]]:
        """The optimizer's step (None without one) and ``avg_bits`` (controlled),
        ``avg_weight_bits``, ``avg_activation_bits`` (NaN where there are none)."""
        if self._measure is None:
            self._measure = self._measurement()
        step, avg, w, a = (float(v) for v in self._measure().numpy())
        return (int(step) if math.isfinite(step) else None,
                {"avg_bits": avg, "avg_weight_bits": w, "avg_activation_bits": a})

    def _measurement(self):
        tensors, weighting, kind = self.tensors, self.weighting, self.kind
        part = "uniform" if weighting == "bops" else weighting
        has = {k: any(t.kind == k for t in tensors) for k in ("weights", "activations")}
        iterations = getattr(getattr(self.model, "optimizer", None), "iterations", None)

        @tf.function(autograph=False)
        def measure():
            nan = tf.constant(float("nan"))
            step = tf.cast(iterations, tf.float32) if iterations is not None else nan
            return tf.stack([step,
                costs.average_bits_tensor(tensors, weighting, kind),
                costs.average_bits_tensor(tensors, part, "weights") if has["weights"] else nan,
                costs.average_bits_tensor(tensors, part, "activations") if has["activations"] else nan,
            ])

        return measure

    @property
    def regularization(self) -> float:
        """λ, the bit loss's ``regularization`` variable."""
        return float(self.bit_loss.regularization.numpy())

    @regularization.setter
    def regularization(self, value: float) -> None:
        self.bit_loss.regularization.assign(value)

    @property
    def anneal_weight(self) -> float:
        """How far the bitlengths have slid to their integers (0 to 1)."""
        return float(self.bit_loss.anneal_weight.numpy())

    @anneal_weight.setter
    def anneal_weight(self, value: float) -> None:
        self.bit_loss.anneal_weight.assign(value)

    def default_speed(self) -> float:
        """``0.8 · bits_lr_multiplier · learning_rate``: a bit below the Adam step of a bitlength."""
        k = float(np.mean([t.quantizer.bits_lr_multiplier for t in self.tensors]))
        lr = _learning_rate(getattr(self.model, "optimizer", None))
        return 0.8 * k * (lr if lr else 1e-3)

    def descent_limit(self, steps: int) -> Optional[Tuple[float, float, float]]:
        """``(bits, multiplier, lr)``: the most the average bitlength can fall in ``steps``
        steps of an Adam-like optimizer at a constant learning rate, whose step moves a
        bitlength at most about ``bits_lr_multiplier · lr``; None where that bound does
        not apply (another optimizer, a learning-rate schedule, no optimizer yet)."""
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is None or not any(s in type(optimizer).__name__.lower() for s in ("adam", "lion")):
            return None
        lr = optimizer.get_config().get("learning_rate")  # a number only when constant
        if isinstance(lr, bool) or not isinstance(lr, (int, float, np.floating)) or lr <= 0:
            return None
        k = max(float(t.quantizer.bits_lr_multiplier) for t in self.tensors)
        return k * float(lr) * steps, k, float(lr)

    def reach_warning(self, average: float, target_bits: float, tolerance: float, steps: int,
                      anneal: float) -> Optional[str]:
        """Why ``average`` cannot come within ``tolerance`` of ``target_bits`` in the ``steps``
        before annealing (a share ``anneal`` of the fit), even at the optimizer's full step;
        None if it can, or the bound does not apply (:meth:`descent_limit`)."""
        fall, k, lr = self.descent_limit(steps) or (math.inf, None, None)
        gap = average - target_bits - tolerance
        if gap <= fall:
            return None
        needed = math.ceil(gap / (k * lr) / (1.0 - anneal))
        return (f"BitBudget: the average bitlength is {average:.2f}, but in the {steps} training steps before "
                f"annealing the bitlengths can fall at most about {fall:.2f} bits (each moves at most "
                f"bits_lr_multiplier {k:g} x learning rate {lr:g} per step), not to the target {target_bits:g}: "
                f"training will end above the budget and freeze_bitlengths(target_bits=...) will cut the rest "
                f"at once. Train at least {needed} steps, raise bits_lr_multiplier in bitprune_model (to about "
                f"{math.ceil(k * gap / max(fall, 1e-9)):g}), or start nearer the target with "
                f"bitprune_model(init_bits=...).")

    def choose_integers(self, target_bits: float, calibration_data=None) -> None:
        """Sets the integers annealing slides to: rounded up, then fitted to the budget
        (``rounding.fit_budget``; costs measured on ``calibration_data`` when given,
        as in ``freeze_bitlengths``)."""
        tensors, bit_loss = self.tensors, self.bit_loss
        learned = rounding.learned_bits(tensors)
        start = rounding.round_all(learned)
        cost = rounding.distance_cost(learned)
        slots = dict(zip(tensors, bit_loss.anneal_bits))

        def set_bits(t, b):
            slots[t].assign(np.reshape(start[t] if b is None else b, slots[t].shape))

        if calibration_data is not None:
            outputs = rounding.model_outputs(self.model, calibration_data)
            reference = outputs()  # the learned blend (anneal weight 0)
            for t in tensors:
                set_bits(t, None)
            bit_loss.anneal_weight.assign(1.0)  # the integer model
            cost = rounding.output_change_cost(outputs, reference, set_bits)
        bits = rounding.fit_budget(tensors, start, target_bits, self.weighting, self.kind, cost, learned=learned)
        for t in tensors:
            set_bits(t, bits[t])

    def write_integers(self) -> None:
        """Writes the integers into the bitlengths themselves, so that the model saved,
        reloaded (without ``BitBudget``) or frozen has exactly them."""
        for t, integer in zip(self.tensors, self.bit_loss.anneal_bits):
            t.bits_variable.assign(integer / t.quantizer.bits_lr_multiplier)
