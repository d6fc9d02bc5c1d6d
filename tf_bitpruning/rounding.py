"""Learned (real) bitlengths to integers: one tensor at a time, or a whole model
to a budget.

:func:`round_bits` rounds one bitlength (``"ceil"``, the paper's choice, or
``"round"``), snapped up into ``allowed_bits``. :func:`fit_budget` starts from
that rounding and lowers tensors one allowed step at a time, cheapest first,
until the model's weighted average is at or below the target; then it raises
back, most costly first, every step that still fits, whole tensors first and
then, for per-channel bitlengths, single channels.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tf_bitpruning import costs

ROUNDINGS = ("ceil", "round")
# n within this of an integer counts as that integer under "ceil" (float noise).
_CEIL_TOLERANCE = 1e-3
# Below this the average counts as on the target (float32 sums of weights).
_TARGET_TOLERANCE = 1e-6

Assignment = Dict[costs.QuantizedTensor, np.ndarray]
# cost(tensor, candidate bits) -> how much worse the model gets (>= 0 preferred).
CostFn = Callable[[costs.QuantizedTensor, np.ndarray], float]


def round_bits(n: float, rounding: str = "ceil", allowed_bits: Optional[Sequence[int]] = None,
               min_bits: int = 1, max_bits: int = 16) -> int:
    """One learned bitlength to the integer it is frozen at."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}.")
    b = math.ceil(n - _CEIL_TOLERANCE) if rounding == "ceil" else int(math.floor(n + 0.5))
    b = min(max(b, min_bits), max_bits)
    if allowed_bits:
        larger = sorted(a for a in allowed_bits if a >= b)
        if not larger:
            raise ValueError(f"Bitlength {n:.2f} rounds to {b}, above every allowed bitlength {sorted(allowed_bits)}.")
        b = larger[0]
    return int(b)


def learned_bits(tensors: Sequence[costs.QuantizedTensor]) -> Assignment:
    """Every tensor's current (real) bitlength, per channel where it has channels.

    Values within ``_CEIL_TOLERANCE`` of an integer are that integer: an annealed model
    reads its integers exactly, the same model reloaded reads them through its stored
    parameter (``n / k``, times ``k`` again: e.g. 3.0000002), and the budget's choices
    must not depend on that rounding."""
    def snap(n):
        nearest = np.round(n)
        return np.where(np.abs(n - nearest) < _CEIL_TOLERANCE, nearest, n).astype(np.float32)

    return {t: snap(np.asarray(t.quantizer.bitlength(t.variables), np.float32)) for t in tensors}


def round_all(learned: Assignment, rounding: str = "ceil",
              allowed_bits: Optional[Sequence[int]] = None) -> Assignment:
    """:func:`round_bits` for every tensor and channel."""
    return {t: np.vectorize(lambda n, q=t.quantizer: round_bits(float(n), rounding, allowed_bits, q.min_bits, 16),
                            otypes=[np.float32])(n)
            for t, n in learned.items()}


def check_target(target_bits, who: str) -> float:
    """A budget as a float in [1, 16], or a ``ValueError`` that names ``who`` asked."""
    try:
        value = float(target_bits)
    except (TypeError, ValueError):
        raise ValueError(f"{who}: target_bits must be a number, got {target_bits!r}.") from None
    if not (math.isfinite(value) and 1.0 <= value <= 16.0):
        raise ValueError(f"{who}: target_bits must be a finite average bitlength in [1, 16], got {target_bits}.")
    return value


def check_allowed_bits(allowed_bits: Optional[Sequence[int]]) -> Optional[List[int]]:
    if allowed_bits is None:
        return None
    allowed = sorted({int(b) for b in allowed_bits})
    if not allowed or allowed[0] < 1 or allowed[-1] > 16:
        raise ValueError(f"allowed_bits must hold integers in [1, 16], got {allowed}.")
    return allowed


def _levels(t: costs.QuantizedTensor, allowed: Optional[List[int]]) -> List[int]:
    """The integers a tensor may be frozen at, ascending."""
    levels = range(t.quantizer.min_bits, 17)
    return [b for b in levels if allowed is None or b in allowed]


def _step(bits: np.ndarray, levels: List[int], direction: int, limit: Optional[np.ndarray] = None):
    """Every channel one allowed level down (-1) or up (+1, at most to ``limit``);
    None if none can move."""
    index = np.searchsorted(levels, bits)
    moved = np.clip(index + direction, 0, len(levels) - 1)
    out = np.asarray(levels, np.float32)[moved]
    if limit is not None:
        out = np.minimum(out, limit)
    return None if np.array_equal(out, bits) else out.astype(np.float32)


def _channel_steps(bits: np.ndarray, levels: List[int], limit: np.ndarray, order: Optional[np.ndarray],
                   count: int) -> List[np.ndarray]:
    """Per-channel bitlengths with one channel one allowed level up (at most to
    ``limit``): the first ``count`` in ``order`` (descending; e.g. how far the learned
    bitlength lies above the current one; else channel order) of those that can move."""
    up = _step(bits, levels, +1, limit=limit)
    if up is None:
        return []
    flat, top = bits.reshape(-1), np.broadcast_to(up, bits.shape).reshape(-1)
    movable = np.flatnonzero(top > flat)
    if order is not None:
        key = np.broadcast_to(order, bits.shape).reshape(-1)[movable]
        movable = movable[np.argsort(-key, kind="stable")]
    out = []
    for i in movable[:count]:
        b = flat.copy()
        b[i] = top[i]
        out.append(b.reshape(bits.shape).astype(np.float32))
    return out


def average(tensors: Sequence[costs.QuantizedTensor], assignment: Assignment,
            weighting: str, kind: Optional[str]) -> float:
    """The weighted average bitlength with every tensor at its assigned bits."""
    return float(costs.average_bits_tensor(list(tensors), weighting, kind,
                                           bits=lambda t: float(np.mean(assignment[t]))))


def fit_budget(tensors: Sequence[costs.QuantizedTensor], start: Assignment, target_bits: float,
               weighting: str, kind: Optional[str], cost: CostFn,
               allowed_bits: Optional[List[int]] = None, learned: Optional[Assignment] = None,
               channel_candidates: int = 8) -> Assignment:
    """Integer bitlengths with a weighted average ``<= target_bits``.

    From ``start`` (e.g. every bitlength rounded up) it repeatedly lowers the
    tensor whose next lower level costs least per bit of average saved, until the
    average fits; then it raises, most costly first, any lowered tensor whose
    step back up still fits. Per-channel bitlengths then fill what is left of the
    budget one channel at a time (a whole big tensor is a coarse step: one kernel
    of the digits CNN is ~0.45 bit of its memory-weighted average): of each
    tensor's ``channel_candidates`` channels furthest below their ``learned``
    bitlength (the first ones without ``learned``), the one with the largest gain
    per bit of average spent goes up, while one fits. ``cost(t, bits)`` is how
    much worse the model gets with ``t`` at ``bits`` and every other tensor at
    ``start``. Only the tensors the budget covers (``kind``; for ``"bops"`` all
    kernels and their inputs) move.
    """
    chosen = [t for t in tensors if t in start]
    movable = chosen if weighting == "bops" else costs.select(chosen, kind)
    levels = {t: _levels(t, allowed_bits) for t in movable}
    lowest = {**start, **{t: np.full_like(start[t], levels[t][0]) for t in movable}}
    floor_avg = average(chosen, lowest, weighting, kind)
    if floor_avg > target_bits + _TARGET_TOLERANCE:
        raise ValueError(
            f"target_bits={target_bits} cannot be met: with weighting={weighting!r} and every tensor at "
            f"its lowest bitlength{'' if allowed_bits is None else f' in allowed_bits={allowed_bits}'} "
            f"the average is {floor_avg:.3f}. Choose a larger target.")

    bits = dict(start)
    cache: Dict[tuple, float] = {}

    def cost_of(t, b):
        key = (id(t), b.tobytes())
        if key not in cache:
            cache[key] = float(cost(t, b))
        return cache[key]

    avg = _Average(chosen, weighting, kind)
    v = avg.values(bits)
    moves: Dict[tuple, tuple] = {}  # (tensor, direction) -> (bits one level over, their mean) or None

    def move(t, direction):
        key = (t, direction)
        if key not in moves:
            out = _step(bits[t], levels[t], direction, limit=start[t] if direction > 0 else None)
            moves[key] = None if out is None else (out, float(np.mean(out)))
        return moves[key]

    def apply(t, new):
        bits[t] = new
        v[avg.index[t]] = float(np.mean(new))
        moves.pop((t, -1), None)
        moves.pop((t, +1), None)

    while True:
        total = avg.total(v)
        now = avg.finish(total)
        if now <= target_bits + _TARGET_TOLERANCE:
            break
        slope = avg.slopes(v)  # the average's sum is linear in each tensor's bits
        best = None
        for t in movable:
            lower = move(t, -1)
            if lower is None:
                continue
            i = avg.index[t]
            saved = now - avg.finish(total + slope[i] * (lower[1] - v[i]))
            if saved <= 0:
                continue
            score = (cost_of(t, lower[0]) - cost_of(t, bits[t])) / saved
            if best is None or score < best[0]:
                best = (score, t, lower[0])
        if best is None:  # unreachable after the floor check; kept as a guard
            raise ValueError(f"target_bits={target_bits} cannot be met (average stays at {now:.3f}).")
        apply(best[1], best[2])

    while True:  # give back what still fits, most valuable first
        total = avg.total(v)
        slope = avg.slopes(v)
        best = None
        for t in movable:
            higher = move(t, +1)
            if higher is None:
                continue
            i = avg.index[t]
            if avg.finish(total + slope[i] * (higher[1] - v[i])) > target_bits + _TARGET_TOLERANCE:
                continue
            gain = cost_of(t, bits[t]) - cost_of(t, higher[0])
            if best is None or gain > best[0]:
                best = (gain, t, higher[0])
        if best is None:
            break
        apply(best[1], best[2])

    while True:  # per-channel bitlengths: single channels into what is left
        total = avg.total(v)
        now = avg.finish(total)
        slope = avg.slopes(v)
        best = None
        for t in movable:
            if np.size(bits[t]) < 2:
                continue
            i = avg.index[t]
            order = None if learned is None else np.asarray(learned[t], np.float32) - bits[t]
            for higher in _channel_steps(bits[t], levels[t], start[t], order, channel_candidates):
                after = avg.finish(total + slope[i] * (float(np.mean(higher)) - v[i]))
                spent = after - now
                if after > target_bits + _TARGET_TOLERANCE or spent <= 0:
                    continue
                gain = (cost_of(t, bits[t]) - cost_of(t, higher)) / spent
                if best is None or gain > best[0]:
                    best = (gain, t, higher)
        if best is None:
            return bits
        apply(best[1], best[2])


class _Average:
    """:func:`average` for a fixed list of tensors, in numpy, as ``finish(total(v))``
    with ``v`` every tensor's mean bits: ``total`` is ``Σ c_t v_t`` (uniform,
    memory; ``finish`` is the identity) or ``Σ MACs_k v_k v_in(k)`` (bops;
    ``finish(S) = sqrt(S / Σ MACs)``), linear in each ``v_t`` alone, so one
    tensor's move changes it by ``slopes(v)[t] · Δv_t``. :func:`fit_budget` asks
    for the average of every candidate move at every step; one eager TensorFlow
    op per tensor there took minutes on a 200-tensor network."""

    def __init__(self, tensors: Sequence[costs.QuantizedTensor], weighting: str, kind: Optional[str]):
        self.tensors = list(tensors)
        self.index = {t: i for i, t in enumerate(self.tensors)}
        self.bops = weighting == "bops"
        if self.bops:
            kernels = [t for t in self.tensors if t.kind == "weights"]
            self.kernels = np.array([self.index[t] for t in kernels], np.int64)
            self.inputs = np.array([-1 if t.input is None else self.index[t.input] for t in kernels], np.int64)
            self.macs = np.array([t.macs for t in kernels], np.float64)
            self.macs_total = float(np.float32(self.macs.sum()))
        else:
            chosen = costs.select(self.tensors, kind)
            self.coef = np.zeros(len(self.tensors))
            if weighting == "uniform":
                self.coef[[self.index[t] for t in chosen]] = 1.0 / len(chosen)
            else:
                total = float(sum(t.elements for t in chosen))
                self.coef[[self.index[t] for t in chosen]] = [t.elements / total for t in chosen]

    def values(self, assignment: Assignment) -> np.ndarray:
        return np.array([np.mean(assignment[t]) for t in self.tensors], np.float64)

    def _input_bits(self, v: np.ndarray) -> np.ndarray:
        return np.where(self.inputs >= 0, v[self.inputs], costs.FLOAT_BITS)

    def total(self, v: np.ndarray) -> float:
        if not self.bops:
            return float(self.coef @ v)
        return float(np.sum(self.macs * v[self.kernels] * self._input_bits(v)))

    def slopes(self, v: np.ndarray) -> np.ndarray:
        if not self.bops:
            return self.coef
        slope = np.zeros(len(self.tensors))
        np.add.at(slope, self.kernels, self.macs * self._input_bits(v))
        fed = self.inputs >= 0
        np.add.at(slope, self.inputs[fed], (self.macs * v[self.kernels])[fed])
        return slope

    def finish(self, total: float) -> float:
        return math.sqrt(max(total, 0.0) / self.macs_total) if self.bops else total


def distance_cost(learned: Dict[costs.QuantizedTensor, np.ndarray]) -> CostFn:
    """The label-free proxy when no calibration data is given: the growth of a
    tensor's quantization noise power below its learned bitlength ``n``,
    ``mean(4^max(n - b, 0) - 1)``. Convex in ``b``: one tensor three bits down
    costs more than three tensors one bit down each."""
    return lambda t, b: float(np.mean(np.power(4.0, np.maximum(learned[t] - b, 0.0)) - 1.0))


def data_batches(data, batch_size: int, empty: str) -> List[List[np.ndarray]]:
    """``data`` (an array, or a tuple of arrays for several inputs) as float32 batches, each
    a list with one array per input; a ``ValueError`` starting with ``empty`` if it has no rows."""
    inputs = data if isinstance(data, (tuple, list)) else (data,)
    inputs = [np.asarray(x, np.float32) for x in inputs]
    if not len(inputs[0]):
        raise ValueError(f"{empty}: give a few hundred samples.")
    return [[x[i:i + batch_size] for x in inputs] for i in range(0, len(inputs[0]), batch_size)]


def model_outputs(model, data, batch_size: int = 256) -> Callable[[], List[tf.Tensor]]:
    """A function returning ``model``'s outputs on ``data`` (inference mode), per
    batch, flattened to ``[batch, values]``; traced once, rerun after each change
    of bitlengths. ``data``: an array, or a tuple of arrays for several inputs."""
    batches = data_batches(data, batch_size, "calibration_data is empty")

    @tf.function
    def run(xs):
        outputs = tf.nest.flatten(model(xs if len(xs) > 1 else xs[0], training=False))
        return tf.concat([tf.reshape(tf.cast(y, tf.float32), [tf.shape(y)[0], -1]) for y in outputs], axis=1)

    return lambda: [run(b) for b in batches]


def output_change_cost(outputs: Callable[[], List[tf.Tensor]], reference: List[tf.Tensor],
                       set_bits: Callable[[costs.QuantizedTensor, Optional[np.ndarray]], None]) -> CostFn:
    """cost(t, b): the mean squared difference, per sample, between ``outputs()``
    with ``t`` at ``b`` and ``reference`` (the learned model's outputs).
    ``set_bits(t, b)`` sets a tensor's candidate bits; ``set_bits(t, None)`` restores them."""
    count = float(sum(int(r.shape[0]) for r in reference))

    def cost(t, b):
        set_bits(t, b)
        try:
            return float(tf.add_n([tf.reduce_sum(tf.square(y - r)) for y, r in zip(outputs(), reference)])) / count
        finally:
            set_bits(t, None)

    return cost
