"""Learned ranges and clips (LSQ/PACT): exact zeros whose gradients train a quantizer's range.

``bitprune_model(activation_range="learned")`` trains an activation quantizer's
``[min, max]``, ``weight_clip="learned"`` a kernel's clip, through these terms, added to
the quantizer's output (:mod:`tf_bitpruning.quant_ops` computes the output itself).
"""

from __future__ import annotations

import tensorflow as tf

from tf_bitpruning.quant_ops import weight_levels
from tf_bitpruning.shared_graph import const


def learned_range_term(x: tf.Tensor, low: tf.Tensor, high: tf.Tensor, n: tf.Tensor, min_bits: int,
                       max_bits: int, frozen: bool = False) -> tf.Tensor:
    """Zero in the forward pass; its gradient to a learned activation range ``[low, high]``
    is LSQ's (Esser et al. 2020) for the quantizer :func:`blend` (or :func:`fixed`,
    ``frozen=True``) computes at bitlength ``n`` over that range (the ``"minmax"`` grid).

    For one integer grid ``Q(x; b) = s · (clip(round(x/s + z), 0, 2^b-1) - z)``, step
    ``s = (high - low) / (2^b - 1)`` and zero point ``z``:
    ``∂Q/∂s = round(x/s + z) - (x/s + z)`` inside the grid, ``k - z`` where it clips
    to code ``k`` (PACT's gradient of 1 above a ReLU's clip); hence
    ``∂Q/∂high = ∂Q/∂s / (2^b - 1) = -∂Q/∂low``. The blend weighs the two grids by
    ``1 - α`` and ``α``. ``x`` and ``n`` get no gradient from this term; add it to the
    quantizer's output (an exact zero: the forward value stays on the grid).
    """
    x = tf.stop_gradient(x)
    term = None
    for b, weight in _grids_used(n, min_bits, max_bits, frozen):
        top = tf.pow(const(2.0), b) - const(1.0)
        step = (high - low) / top
        step_value = tf.stop_gradient(step)
        zero_point = tf.clip_by_value(tf.round(-tf.stop_gradient(low) / step_value), const(0.0), top)
        t = x / step_value + zero_point
        code = tf.clip_by_value(tf.round(t), const(0.0), top)
        inside = tf.logical_and(t >= const(0.0), t <= top)
        term = _add_zero(term, step, tf.where(inside, code - t, code - zero_point), weight)
    return term


def _grids_used(n: tf.Tensor, min_bits: int, max_bits: int, frozen: bool):
    """``(b, weight)`` of the integer grids :func:`blend` (``frozen``: :func:`fixed`)
    mixes at bitlength ``n`` (no gradient); ``weight`` None for one grid."""
    n = tf.stop_gradient(tf.cast(n, tf.float32))
    if frozen:
        return [(tf.round(n), None)]
    if min_bits == max_bits:
        return [(tf.constant(float(min_bits)), None)]
    b = tf.clip_by_value(tf.floor(n), const(min_bits), const(max_bits - 1))
    return [(b, const(1.0) - (n - b)), (b + const(1.0), n - b)]


def _add_zero(term, step, g, weight):
    """``term`` plus ``step · g`` minus itself (an exact zero whose gradient to ``step`` is ``g · weight``)."""
    g = tf.stop_gradient(g if weight is None else g * weight)
    part = step * g
    part = part - tf.stop_gradient(part)
    return part if term is None else term + part


def learned_clip_term(w: tf.Tensor, clip: tf.Tensor, n: tf.Tensor, min_bits: int, max_bits: int,
                      frozen: bool = False) -> tf.Tensor:
    """Zero in the forward pass; its gradient to a learned weight clip ``c`` (the top
    of the symmetric grid, per tensor or broadcastable per channel) is LSQ's for the
    quantizer at bitlength ``n`` (as :func:`learned_range_term`).

    ``Q(w; b) = s · clip(round(w/s), -L, L)``, ``L = 2^(b-1) - 1``, ``s = c / L``:
    ``∂Q/∂s = round(w/s) - w/s`` where ``|w/s| <= L``, ``±L`` where it clips; hence
    ``∂Q/∂c = ∂Q/∂s / L``.
    """
    w = tf.stop_gradient(w)
    term = None
    for b, weight in _grids_used(n, min_bits, max_bits, frozen):
        levels = weight_levels(b)
        step = clip / levels
        t = w / tf.stop_gradient(step)
        code = tf.clip_by_value(tf.round(t), -levels, levels)
        term = _add_zero(term, step, tf.where(tf.abs(t) <= levels, code - t, code), weight)
    return term
