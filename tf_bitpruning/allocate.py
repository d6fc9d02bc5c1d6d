"""Start at the budget: integer bitlengths chosen by each tensor's effect on the outputs.

BitPruning starts every tensor at the top of its range and lets ``BitBudget`` bring
the average down. For a network that is already trained, :func:`allocate_bitlengths`
can start it at the budget instead, with more bits where fewer would change the
model's outputs most (a post-training mixed-precision allocation, the greedy search
of ``freeze_bitlengths(target_bits=..., calibration_data=...)``). Training then goes
on from there, with the bitlengths still learned, or after ``freeze_bitlengths``.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np
import tensorflow as tf

from tf_bitpruning import costs
from tf_bitpruning.freeze import assign_bits, budget_terms, uncalibrated_layers
from tf_bitpruning.rounding import (check_allowed_bits, check_target, data_batches, fit_budget, learned_bits,
                                    model_outputs, output_change_cost, round_all)

__all__ = ["allocate_bitlengths", "calibrate_ranges"]


def calibrate_ranges(model, data, batch_size: int = 32) -> None:
    """Runs ``data`` through ``model`` in training mode, batch by batch, with no weight
    update, so that every activation range (and BatchNormalization's moving statistics,
    as a training epoch would) takes in that data. ``data``: an array, or a tuple of
    arrays for several inputs."""
    @tf.function
    def step(xs):
        model(xs if len(xs) > 1 else xs[0], training=True)

    for batch in data_batches(data, batch_size, "calibrate_ranges: the data is empty"):
        step(batch)


def allocate_bitlengths(model, target_bits: float, calibration_data, *, weighting: Optional[str] = None,
                        kind: Optional[str] = None, allowed_bits: Optional[Sequence[int]] = None,
                        batch_size: int = 32) -> Dict[str, int]:
    """Sets the bitlengths of a bit-pruned ``model`` to integers at ``target_bits``.

    From the current bitlengths rounded up (the top of the range, before training),
    tensors go down one bit at a time, the one whose lower bitlength changes the
    model's outputs on ``calibration_data`` least per bit saved first, until the
    average fits (then steps back up that still fit are taken, as in
    ``freeze_bitlengths``). The bitlengths stay trainable: ``fit`` with
    ``BitBudget(target_bits)`` goes on trading bits between tensors from there, instead
    of sliding from 8 bits. Train it at a fraction of the rate the network was trained at
    (a fifth in ``docs/accuracy.md``, where EfficientNetB0 quantized to 4 bits this way
    ends at its float accuracy).

    >>> bp = tfbp.bitprune_model(trained_model)                          # doctest: +SKIP
    >>> tfbp.allocate_bitlengths(bp, 4.0, x_train[:128])                 # doctest: +SKIP
    >>> bp.compile(keras.optimizers.Adam(2e-4), loss)                    # doctest: +SKIP
    >>> bp.fit(x, y, callbacks=[tfbp.BitBudget(4.0)])                    # doctest: +SKIP

    Args:
      target_bits: the average to meet (``weighting``, ``kind``: as in ``BitBudget``;
        default those of the model's bit loss).
      calibration_data: a few hundred training inputs. Activation ranges that have
        seen no training batch are first calibrated on them (:func:`calibrate_ranges`,
        which also moves BatchNormalization's moving statistics toward that data).
      allowed_bits: optional hardware set, e.g. ``(2, 4, 8)``.

    Returns:
      ``{tensor name: bits}``, as :func:`tf_bitpruning.bitlengths` names them.
    """
    tensors = costs.quantized_tensors(model)
    costs.require_tensors(model, tensors)
    target_bits = check_target(target_bits, "allocate_bitlengths")
    allowed_bits = check_allowed_bits(allowed_bits)
    weighting, kind = budget_terms(model, weighting, kind)
    if uncalibrated_layers(model):
        calibrate_ranges(model, calibration_data, batch_size)
    learned = learned_bits(tensors)
    start = round_all(learned, "ceil", allowed_bits)
    own = {t: t for t in tensors}
    assign_bits(own, start)
    outputs = model_outputs(model, calibration_data)
    change = output_change_cost(outputs, outputs(), lambda t, b: assign_bits(own, {t: start[t] if b is None else b}))

    def cost(t, b):  # the reference is the model at ``start``: no pass needed to know it is unchanged there
        return 0.0 if np.array_equal(b, start[t]) else change(t, b)

    chosen = fit_budget(tensors, start, target_bits, weighting, kind, cost, allowed_bits, learned=learned)
    assign_bits(own, chosen)
    return {t.name: (int(b) if np.ndim(b) == 0 else [int(c) for c in np.ravel(b)]) for t, b in chosen.items()}
