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

from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import weakref

import tensorflow as tf

# Python scalars a quantizer combines with tensors, as one Const op per graph: every
# quantizer of a train step uses the same few (0, 1, 2, 1e-12, ...), and a Python
# float converted at each use is a Const op each time (a third of the quantizer ops
# of a traced train step). Same float32 values, so the same results; eager: the scalar.
_CONSTANTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def const(value: float):
    """``value`` as a float32 constant shared by every use in the graph being built
    (outside control dependencies, so sharing it adds no ordering); eager: ``value``."""
    if tf.executing_eagerly():
        return value
    graph = tf.compat.v1.get_default_graph()
    table = _CONSTANTS.setdefault(graph, {})
    key = float(value)
    tensor = table.get(key)
    if tensor is None:
        with tf.control_dependencies(None), tf.name_scope("bitprune_const/"):
            tensor = table[key] = tf.constant(key, tf.float32)
    return tensor


# The quantizer math of one quantizer call, a pure function of float32 tensors, traced
# once per quantizer config and rank into a tf.function that every quantizer call of a
# train step then calls (one call op in the step's graph instead of ~60 ops forward and
# more backward: tracing and wrapping spend their time creating graph ops, Python's
# part of it per op). The runtime inlines the call before optimizing the step graph,
# so the step runs the same ops: same results, same speed.
MATH_FUNCTIONS: Dict[Any, Any] = {}


def relaxed_spec(shape) -> tf.TensorSpec:
    """A float32 spec of ``shape``'s rank: dims of 1 kept (bitlengths broadcast along them), others free."""
    return tf.TensorSpec([1 if d == 1 else None for d in shape], tf.float32)


def call_math(key, math, *tensors):
    """``math(*tensors)`` through the shared tf.function of ``key`` (built at first use);
    outputs get the static shape of ``tensors[0]``. Eager: ``math`` directly."""
    if tf.executing_eagerly():
        return math(*tensors)
    specs = tuple(relaxed_spec(t.shape) for t in tensors)
    full_key = (key, specs)
    function = MATH_FUNCTIONS.get(full_key)
    if function is None:
        function = MATH_FUNCTIONS[full_key] = tf.function(math, input_signature=specs, autograph=False)
    out = function(*tensors)
    out.set_shape(tensors[0].shape)
    return out


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
