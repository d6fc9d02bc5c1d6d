"""The quantizer math: pure TensorFlow, no Keras.

Integer quantizers at a (possibly dynamic) integer bitlength ``b`` and the
differentiable blend between the two integers around a real bitlength ``n``
(BitPruning, arXiv 2002.03090):

    Q̂(x; n) = Q(x; b) + α · (Q(x; b + 1) - Q(x; b)),   b = floor(n), α = n - b

Rounding uses a straight-through estimator; ``∂Q̂/∂n = Q(x; b+1) - Q(x; b)`` is
exact. Every function here accepts ``bits`` as a Python number or a tensor that
broadcasts against the quantized tensor (one bitlength per tensor or per channel).

Grids (``grid=``): ``"minmax"`` (the default; steps ``max|w| / (2^(b-1)-1)`` and
``(max - min) / (2^b - 1)``) or ``"pow2"``: the same grids with the step rounded
up to a power of two, so that a ``fixed<b, I>`` type holds them exactly (hls4ml).
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

import tensorflow as tf

from tf_bitpruning.shared_graph import const

def ste_round(x: tf.Tensor) -> tf.Tensor:
    """Rounds in the forward pass; passes the gradient straight through."""
    return x + tf.stop_gradient(tf.round(x) - x)


def weight_levels(bits) -> tf.Tensor:
    """Largest integer of the symmetric narrow-range b-bit grid: 2^(b-1) - 1."""
    return tf.pow(const(2.0), tf.cast(bits, tf.float32) - const(1.0)) - const(1.0)


def max_abs(w: tf.Tensor, reduce_axes: Optional[Sequence[int]] = None) -> tf.Tensor:
    """``max|w|`` (no gradient, at least 1e-12), per tensor (``reduce_axes=None``) or
    per channel (reduced over ``reduce_axes``, kept as broadcastable dims)."""
    if reduce_axes is None:
        m = tf.reduce_max(tf.abs(w))
    else:
        m = tf.reduce_max(tf.abs(w), axis=list(reduce_axes), keepdims=True)
    return tf.maximum(tf.stop_gradient(m), const(1e-12))


# The grids a quantizer can use (see the module doc); the first is the default.
GRIDS = ("minmax", "pow2")


def check_grid(grid: str) -> str:
    """``grid`` if it is one of :data:`GRIDS`, else a ``ValueError``."""
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}.")
    return grid


def pow2_ceil(x: tf.Tensor) -> tf.Tensor:
    """The smallest power of two ``>= x`` (``x > 0``; no gradient), exact for every
    float32 ``x`` (``log2`` alone is off by one at some powers of two)."""
    x = tf.stop_gradient(tf.cast(x, tf.float32))
    two, one = const(2.0), const(1.0)
    e = tf.math.ceil(tf.math.log(x) / tf.math.log(two))
    e = tf.where(tf.pow(two, e - one) >= x, e - one, e)
    e = tf.where(tf.pow(two, e) < x, e + one, e)
    return tf.pow(two, e)


def weight_scale(w: tf.Tensor, bits, reduce_axes: Optional[Sequence[int]] = None,
                 w_max: Optional[tf.Tensor] = None, grid: str = "minmax") -> tf.Tensor:
    """Step ``s = max|w| / (2^(b-1) - 1)`` (``grid="pow2"``: rounded up to a power of
    two, so ``max|w|`` stays inside the grid); ``w_max`` is :func:`max_abs` if already known."""
    return _scale(max_abs(w, reduce_axes) if w_max is None else w_max, weight_levels(bits), grid)


def _scale(top: tf.Tensor, levels: tf.Tensor, grid: str) -> tf.Tensor:
    s = top / levels
    return pow2_ceil(s) if check_grid(grid) == "pow2" else s


# How the top of a weight grid is chosen: "max" (``max|w|``, the spec's min-max
# quantizer, the default), "mse" (the clip value minimizing the squared error) or
# "learned" (a trained variable, :func:`learned_clip_term`).
WEIGHT_CLIPS = ("max", "mse", "learned")


def mse_clip(w: tf.Tensor, bits, reduce_axes: Optional[Sequence[int]] = None,
             w_max: Optional[tf.Tensor] = None, candidates: int = 32, lowest: float = 0.1) -> tf.Tensor:
    """The clip value ``c`` (the grid's top level) that minimizes the squared
    quantization error ``Σ (Q(w; b, c) - w)²``, per tensor or per channel (no gradient).

    ``c = r · max|w|`` with ``r`` searched on ``candidates`` evenly spaced ratios in
    ``[lowest, 1]``; ``r = 1`` (plain ``max|w|``) wins ties, so ``c`` is never worse
    than min-max. At 2–3 bits the optimum clips the largest weights: a ternary grid
    over ``±max|w|`` sets most weights to 0. Use the result as ``w_max`` of
    :func:`quantize_weights_int` and :func:`weight_scale`.
    """
    w = tf.stop_gradient(w)
    top = max_abs(w, reduce_axes) if w_max is None else w_max
    levels = weight_levels(bits)

    def error(c):
        s = c / levels
        e = tf.square(s * tf.clip_by_value(tf.round(w / s), -levels, levels) - w)
        return tf.reduce_sum(e) if reduce_axes is None else tf.reduce_sum(e, axis=list(reduce_axes), keepdims=True)

    best_c = top * tf.ones_like(levels)
    best_e = error(best_c)
    for i in range(candidates - 1):
        c = best_c * 0.0 + top * (lowest + (1.0 - lowest) * i / (candidates - 1))
        e = error(c)
        better = e < best_e
        best_c, best_e = tf.where(better, c, best_c), tf.where(better, e, best_e)
    return best_c


def pow2_mse_clip(w: tf.Tensor, bits, reduce_axes: Optional[Sequence[int]] = None,
                  w_max: Optional[tf.Tensor] = None, candidates: int = 4) -> tf.Tensor:
    """:func:`mse_clip` on a power-of-two grid (``grid="pow2"``, ``clip="mse"``): the
    clip ``c = s · (2^(b-1) - 1)`` whose step ``s`` (a power of two) gives the least
    squared error, ``s`` among ``pow2_ceil(max|w| / (2^(b-1)-1)) / 2^k``, ``k = 0 ..
    candidates - 1`` (rounded down and saturating); ``k = 0`` wins ties. The step that
    always rounds up can be up to twice the min-max step: at 2 bits (ternary) it sets
    every weight below ``max|w|`` to 0. ``c / (2^(b-1)-1)`` is ``s`` exactly (no gradient)."""
    w = tf.stop_gradient(w)
    top = max_abs(w, reduce_axes) if w_max is None else w_max
    levels = weight_levels(bits)
    best_s = pow2_ceil(top / levels)

    def error(s):
        e = tf.square(s * tf.clip_by_value(tf.round(w / s), -levels, levels) - w)
        return tf.reduce_sum(e) if reduce_axes is None else tf.reduce_sum(e, axis=list(reduce_axes), keepdims=True)

    best_e, s = error(best_s), best_s
    for _ in range(candidates - 1):
        s = s * const(0.5)
        e = error(s)
        better = e < best_e
        best_s, best_e = tf.where(better, s, best_s), tf.where(better, e, best_e)
    return best_s * levels


def quantize_weights_int(w: tf.Tensor, bits, reduce_axes: Optional[Sequence[int]] = None,
                         w_max: Optional[tf.Tensor] = None, grid: str = "minmax") -> tf.Tensor:
    """Symmetric narrow-range quantizer at integer ``bits`` (no gradient).

    ``Q(w; b) = s · clip(round(w / s), -(2^(b-1)-1), 2^(b-1)-1)``; b = 2 is ternary.
    """
    w = tf.stop_gradient(w)
    return quantize_weights_levels(w, weight_levels(bits), max_abs(w, reduce_axes) if w_max is None else w_max, grid)


def quantize_weights_levels(w: tf.Tensor, levels: tf.Tensor, w_max: tf.Tensor, grid: str = "minmax") -> tf.Tensor:
    """:func:`quantize_weights_int` of a ``w`` already without gradient, given its
    ``levels = weight_levels(bits)`` and its grid top ``w_max`` (fewer graph ops)."""
    s = _scale(w_max, levels, grid)
    return s * tf.clip_by_value(tf.round(w / s), -levels, levels)


def activation_grid(range_min: tf.Tensor, range_max: tf.Tensor, bits, grid: str = "minmax"):
    """The asymmetric b-bit grid over ``[min, max]`` with 0 exactly representable.

    Returns ``(lo, step, zero_point)``: grid values are ``lo + step * k`` for
    ``k = 0 .. 2^b - 1`` and ``k = zero_point`` is exactly 0 (TFLite's nudging).

    ``grid="pow2"``: a fixed-point grid, ``step`` the smallest power of two that
    covers the range: unsigned (``zero_point = 0``, ``ufixed<b, I>``) when
    ``min >= 0``, else two's complement (``zero_point = 2^(b-1)``, ``fixed<b, I>``).
    """
    range_min, range_max = clamp_range(range_min, range_max)
    return clamped_grid(range_min, range_max, bits, grid)


def clamp_range(range_min: tf.Tensor, range_max: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """The range :func:`activation_grid` spans: ``min <= 0`` and ``max > min``."""
    range_min = tf.minimum(range_min, const(0.0))
    return range_min, tf.maximum(range_max, range_min + const(1e-6))


def clamped_grid(range_min: tf.Tensor, range_max: tf.Tensor, bits, grid: str = "minmax", top=None):
    """:func:`activation_grid` of a range already through :func:`clamp_range`
    (``top = 2^b - 1`` if known)."""
    bits = tf.cast(bits, tf.float32)
    zero, one, two = const(0.0), const(1.0), const(2.0)
    top = tf.pow(two, bits) - one if top is None else top
    if check_grid(grid) == "pow2":
        half = tf.pow(two, bits - one)
        signed = range_min < zero
        # Signed: -min within 2^(b-1) steps, max within 2^(b-1) - 1 (none at b = 1: max clips to 0).
        positive = tf.where(signed, half - one, top)
        need = tf.where(positive > zero, range_max / tf.maximum(positive, one), zero)
        need = tf.maximum(need, tf.where(signed, -range_min / half, zero))
        step = pow2_ceil(tf.maximum(need, const(1e-30)))
        zero_point = tf.where(signed, half, tf.zeros_like(half))
        return -zero_point * step, step, zero_point
    step = (range_max - range_min) / top
    zero_point = tf.clip_by_value(tf.round(-range_min / step), zero, top)
    return -zero_point * step, step, zero_point


def quantize_activations_int(x: tf.Tensor, range_min: tf.Tensor, range_max: tf.Tensor, bits,
                             grid: str = "minmax") -> tf.Tensor:
    """Asymmetric quantizer at integer ``bits`` (no gradient):
    ``Q(x; b) = lo + Δ · clip(round((x - lo) / Δ), 0, 2^b - 1)``.

    ``grid="pow2"``: ``Δ · clip(round(x / Δ), -z, 2^b - 1 - z)`` (``z`` the zero
    point): what a ``fixed``/``ufixed`` cast with round-half-to-even and
    saturation computes (``tf.round`` rounds half to even, hls4ml's ``RND_CONV``).
    """
    range_min, range_max = clamp_range(range_min, range_max)
    return quantize_activations_clamped(tf.stop_gradient(x), range_min, range_max, bits, grid)


def quantize_activations_clamped(x: tf.Tensor, range_min: tf.Tensor, range_max: tf.Tensor, bits,
                                 grid: str = "minmax") -> tf.Tensor:
    """:func:`quantize_activations_int` of an ``x`` already without gradient and a
    range already through :func:`clamp_range` (fewer graph ops when both integer
    quantizers of a blend share them)."""
    top = tf.pow(const(2.0), tf.cast(bits, tf.float32)) - const(1.0)
    lo, step, zero_point = clamped_grid(range_min, range_max, bits, grid, top)
    if grid == "pow2":
        return step * tf.clip_by_value(tf.round(x / step), -zero_point, top - zero_point)
    return lo + step * tf.clip_by_value(tf.round((x - lo) / step), const(0.0), top)


def bitlength_from_param(param: tf.Tensor, multiplier: float, min_bits: int, max_bits: int) -> tf.Tensor:
    """The real bitlength ``n = multiplier · param`` in ``[min_bits, max_bits]``, its
    gradient passed to ``param`` unscaled (see :mod:`tf_bitpruning.quantizers`)."""
    n = param + tf.stop_gradient(const(multiplier - 1.0) * param)
    return tf.clip_by_value(n, const(min_bits), const(max_bits))


def batch_range(x: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """``x``'s ``[min, max]`` widened to hold 0 (an activation grid represents 0)."""
    zero = const(0.0)
    return tf.minimum(tf.reduce_min(x), zero), tf.maximum(tf.reduce_max(x), zero)


def moving_range(old_min: tf.Tensor, old_max: tf.Tensor, batch_min: tf.Tensor, batch_max: tf.Tensor,
                 decay: float, expand: bool) -> Tuple[tf.Tensor, tf.Tensor]:
    """A tracked activation range after one batch: the moving average of the batch
    ranges (``expand``: never narrower than the batch's); the batch's own range while
    the tracked one is still empty (``old_max <= old_min``, before the first batch)."""
    started = old_max > old_min
    new_min = const(decay) * old_min + const(1.0 - decay) * batch_min
    new_max = const(decay) * old_max + const(1.0 - decay) * batch_max
    if expand:
        new_min, new_max = tf.minimum(new_min, batch_min), tf.maximum(new_max, batch_max)
    return tf.where(started, new_min, batch_min), tf.where(started, new_max, batch_max)


def blend(x: tf.Tensor, quantize_int: Callable[[tf.Tensor], tf.Tensor], n: tf.Tensor,
          min_bits: int, max_bits: int,
          grad_range: Optional[Tuple[tf.Tensor, tf.Tensor]] = None) -> tf.Tensor:
    """The differentiable quantizer ``Q̂(x; n)`` around the real bitlength ``n``.

    ``quantize_int(b)`` returns ``Q(x; b)`` without gradient; the result carries
    the straight-through gradient to ``x`` (see :func:`fixed` for ``grad_range``)
    and the exact gradient ``Q(x; b+1) - Q(x; b)`` to ``n``. ``b`` is kept in
    ``[min_bits, max_bits - 1]`` so that ``n = max_bits`` gives ``Q(x; max_bits)``.
    """
    n = tf.cast(n, tf.float32)
    if min_bits == max_bits:
        return _straight_through(x, quantize_int(tf.constant(float(min_bits))), grad_range)
    b = tf.stop_gradient(tf.clip_by_value(tf.floor(n), const(min_bits), const(max_bits - 1)))
    q_lo = quantize_int(b)
    diff = quantize_int(b + const(1.0)) - q_lo
    return _straight_through(x, q_lo, grad_range, alpha=n - b, diff=diff)


def fixed(x: tf.Tensor, quantize_int: Callable[[tf.Tensor], tf.Tensor], n: tf.Tensor,
          grad_range: Optional[Tuple[tf.Tensor, tf.Tensor]] = None) -> tf.Tensor:
    """One integer quantizer at ``round(n)`` with a straight-through gradient
    (the frozen phase: no interpolation, no gradient to ``n``).

    The gradient to ``x`` is 1, or, with ``grad_range=(low, high)``, 1 inside
    ``[low, high]`` and 0 outside (a clip's gradient).
    """
    b = tf.stop_gradient(tf.round(tf.cast(n, tf.float32)))
    return _straight_through(x, quantize_int(b), grad_range)


def _sum_to(g: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """Sums a gradient over the axes that ``like`` broadcast along."""
    if like.shape.rank == 0:
        return tf.reduce_sum(g)
    axes = [i for i, d in enumerate(like.shape) if d == 1 and g.shape[i] != 1]
    return tf.reduce_sum(g, axis=axes, keepdims=True) if axes else g


def _straight_through(x, base, grad_range, alpha=None, diff=None):
    """``base + alpha · diff`` forward, as one op with a hand-written gradient:
    ``dy`` (masked to ``grad_range``) to ``x`` and ``Σ dy · diff`` to ``alpha``.
    Fewer ops than the stop-gradient formulation, forward and backward: the
    quantizers sit on every activation of the train step."""

    def forward(x, *alpha_arg):
        value = base if alpha is None else base + alpha_arg[0] * diff

        def grad(dy):
            dx = dy
            if grad_range is not None:
                inside = tf.logical_and(x >= grad_range[0], x <= grad_range[1])
                dx = tf.where(inside, dy, tf.zeros_like(dy))
            if alpha is None:
                return dx
            return dx, _sum_to(dy * diff, alpha_arg[0])

        return value, grad

    if alpha is None:
        return tf.custom_gradient(lambda x: forward(x))(x)
    return tf.custom_gradient(lambda x, a: forward(x, a))(x, alpha)
