"""After learning: round every bitlength, freeze it, fine-tune at fixed precision."""

from __future__ import annotations

import warnings
from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tf_bitpruning import costs
from tf_bitpruning.configs import BitPruneQuantizeConfig
from tf_bitpruning.pipeline import pipeline_for
from tf_bitpruning.quantizers import ActivationBitQuantizer, BitlengthQuantizer
from tf_bitpruning.rounding import (ROUNDINGS, check_allowed_bits, check_target, distance_cost, fit_budget,
                                    learned_bits, model_outputs, output_change_cost, round_all, round_bits)

__all__ = ["freeze_bitlengths", "round_bits", "ROUNDINGS"]


def _frozen(quantizer: BitlengthQuantizer, freeze_ranges: bool) -> BitlengthQuantizer:
    config = dict(quantizer.get_config(), frozen=True)
    if isinstance(quantizer, ActivationBitQuantizer):
        config["freeze_range"] = freeze_ranges
    return type(quantizer).from_config(config)


def _freeze_config(config, freeze_ranges):
    if not isinstance(config, BitPruneQuantizeConfig):
        return config
    return config.replace(
        weight_quantizer={a: _frozen(q, freeze_ranges) for a, q in config.weight_quantizers.items()},
        activation_quantizer=_frozen(config.activation_quantizer, freeze_ranges))


def freeze_bitlengths(model: keras.Model, rounding: str = "ceil",
                      allowed_bits: Optional[Sequence[int]] = None,
                      freeze_ranges: bool = True, *, target_bits: Optional[float] = None,
                      weighting: Optional[str] = None, kind: Optional[str] = None,
                      calibration_data=None) -> keras.Model:
    """A copy of a bit-pruned model with every bitlength rounded and frozen.

    Each tensor then goes through exactly one integer quantizer (no blend), its
    bitlength is no longer trainable, and the bit loss is constant. Compile and
    fine-tune the result as usual.

    >>> frozen = freeze_bitlengths(bp)                                  # doctest: +SKIP
    >>> frozen = freeze_bitlengths(bp, target_bits=3.0, calibration_data=x[:256])  # doctest: +SKIP

    Args:
      rounding: ``"ceil"`` (the paper's choice) or ``"round"``. After
        ``BitBudget``'s annealing the bitlengths are integers and both agree.
      allowed_bits: optional hardware set, e.g. ``(2, 4, 8)``: each bitlength is
        snapped up to the nearest allowed value.
      freeze_ranges: also stop the activation range updates (recommended: a
        fine-tune that keeps moving ranges at the learning-phase rate can end
        below where it started).
      target_bits: a budget the frozen model must meet: its average bitlength
        (``weighting``, ``kind``) ends at or below it. Starting from ``rounding``,
        tensors are lowered one integer (one ``allowed_bits`` level) at a time,
        cheapest first per bit saved, until the average fits; then lowered
        tensors whose step back up still fits are raised, most costly first, then
        (per-channel bitlengths) single channels, into what is left of the budget.
        The cost of a tensor at ``b`` bits (others as rounded) is, with
        ``calibration_data``, the mean squared change of the model's outputs on
        that data against the learned model's outputs; without it, the growth
        of the tensor's quantization noise below its learned ``n``,
        ``4^(n - b) - 1`` (a tensor that learned 3.1 goes to 3 before one that
        learned 3.9; two tensors one bit down before one two bits down).
        Without ``target_bits`` only ``rounding`` applies.
      weighting, kind: how the budget averages, as in ``BitBudget``; default:
        those of the model's bit loss (``"uniform"``, all tensors).
      calibration_data: inputs (an array, or a tuple of arrays for several
        inputs), a few hundred samples: used only with ``target_bits``.
    """
    tensors = costs.quantized_tensors(model)
    costs.require_tensors(model, tensors)
    allowed_bits = check_allowed_bits(allowed_bits)
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}.")
    learned = learned_bits(tensors)
    start = round_all(learned, rounding, allowed_bits)
    if target_bits is None and calibration_data is not None:
        raise ValueError("freeze_bitlengths: calibration_data is used to meet target_bits; give target_bits too.")

    # A range that never saw a training batch is empty; frozen, it would clip every
    # activation to 0 during fine-tuning. Such ranges keep calibrating.
    uncalibrated = uncalibrated_layers(model)
    if freeze_ranges and uncalibrated:
        warnings.warn(f"freeze_bitlengths: the activation ranges of {sorted(uncalibrated)} were never "
                      f"calibrated (no training batch yet); they are left to update during fine-tuning.",
                      stacklevel=2)

    frozen = pipeline_for(model).clone_frozen(
        model, lambda config, name: _freeze_config(config, freeze_ranges and name not in uncalibrated),
        lambda quantizer, name: _frozen(quantizer, freeze_ranges and name not in uncalibrated))
    twins = dict(zip(tensors, costs.quantized_tensors(frozen)))
    assign_bits(twins, start)
    if target_bits is not None:
        weighting, kind = budget_terms(model, weighting, kind)
        target_bits = check_target(target_bits, "freeze_bitlengths")
        cost = (distance_cost(learned) if calibration_data is None
                else output_change_cost(model_outputs(frozen, calibration_data),
                                        model_outputs(model, calibration_data)(),
                                        lambda t, b: assign_bits(twins, {t: start[t] if b is None else b})))
        assign_bits(twins, fit_budget(tensors, start, target_bits, weighting, kind, cost, allowed_bits,
                                       learned=learned))
    old = costs.get_bit_loss(model)
    if old is not None:
        costs.attach_bit_loss(frozen, float(old.regularization.numpy()), old.weighting)
        costs.get_bit_loss(frozen).kind = getattr(old, "kind", None)
    return frozen


def budget_terms(model: keras.Model, weighting: Optional[str], kind: Optional[str]):
    """``(weighting, kind)`` of a budget: those given, else those of the model's bit loss."""
    bit_loss = costs.get_bit_loss(model)
    weighting = weighting or (bit_loss.weighting if bit_loss is not None else "uniform")
    if kind is None and weighting != "bops" and bit_loss is not None:
        kind = getattr(bit_loss, "kind", None)
    costs.check_weighting(weighting)
    return weighting, kind


def uncalibrated_layers(model: keras.Model) -> set:
    """Names of the layers whose activation range has seen no training batch yet (empty)."""
    return {layer.name for layer in model.layers for q, v in costs.activation_tensors(layer)
            if isinstance(q, ActivationBitQuantizer) and "min" in v and _value(v["max"]) <= _value(v["min"])}


def _value(variable) -> float:
    """A scalar variable's value (also a MirroredVariable, which ``float()`` refuses)."""
    return float(np.asarray(tf.convert_to_tensor(variable)))


def assign_bits(twins: Dict[costs.QuantizedTensor, costs.QuantizedTensor], bits) -> None:
    """Sets bitlengths: ``bits`` holds the source tensors' values, ``twins`` maps each to
    the tensor to set (a frozen copy's, or itself)."""
    for t, b in bits.items():
        twin = twins[t]
        twin.bits_variable.assign(np.reshape(b, twin.bits_variable.shape) / twin.quantizer.bits_lr_multiplier)
