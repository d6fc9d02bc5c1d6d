"""Fixed-point types (``ap_fixed``/``ac_fixed`` as hls4ml writes them) of a frozen
bit-pruned model's tensors: the grids of ``grid="pow2"`` quantizers and the exact
types of the sums and products between them.

A type is ``fixed<W, I>`` (two's complement) or ``ufixed<W, I>``: ``W`` bits of which
``I`` are above the binary point (the sign bit included), so its step is ``2^-(W-I)``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Optional

import numpy as np

# hls4ml's modes: our quantizers round half to even (``tf.round``: RND_CONV) and clip
# (SAT); a type that holds every value it receives needs neither (TRN, WRAP: no logic).
ROUND, SATURATE = "RND_CONV", "SAT"
EXACT_MODES = ("TRN", "WRAP")


@dataclasses.dataclass(frozen=True)
class FixedType:
    """``fixed<W, I>``/``ufixed<W, I>`` with ``W = integer + fraction``."""

    signed: bool
    integer: int
    fraction: int
    rounding: str = EXACT_MODES[0]
    saturation: str = EXACT_MODES[1]

    @property
    def width(self) -> int:
        return self.integer + self.fraction

    @property
    def step(self) -> float:
        return 2.0 ** -self.fraction

    @property
    def low(self) -> float:
        return -(2.0 ** (self.integer - 1)) if self.signed else 0.0

    @property
    def high(self) -> float:
        return (2.0 ** (self.integer - 1) if self.signed else 2.0 ** self.integer) - self.step

    def hls(self) -> str:
        """The hls4ml precision string, e.g. ``"ufixed<3,1,RND_CONV,SAT>"``."""
        kind = "fixed" if self.signed else "ufixed"
        return f"{kind}<{self.width},{self.integer},{self.rounding},{self.saturation}>"

    def exact(self) -> "FixedType":
        """The same bits without rounding and saturation logic (for values it holds)."""
        return dataclasses.replace(self, rounding=EXACT_MODES[0], saturation=EXACT_MODES[1])

    def holds(self, values: np.ndarray) -> bool:
        """Whether every value is one of the type's (on its step, inside its range)."""
        v = np.asarray(values, np.float64)
        codes = v / self.step
        return bool(np.all(codes == np.round(codes)) and np.all(v >= self.low) and np.all(v <= self.high))


def step_fraction(step: float) -> int:
    """``F`` of a power-of-two step ``2^-F``; ``ValueError`` for any other step."""
    mantissa, exponent = math.frexp(float(step))
    if mantissa != 0.5:
        raise ValueError(f"step {step!r} is not a power of two")
    return 1 - exponent


def grid_type(bits: int, step: float, signed: bool) -> FixedType:
    """The type of a ``grid="pow2"`` quantizer at ``bits``: ``b`` bits of step ``step``,
    rounding half to even and saturating, as the quantizer does."""
    fraction = step_fraction(step)
    return FixedType(signed, int(bits) - fraction, fraction, ROUND, SATURATE)


def covering(low: float, high: float, fraction: int, signed: Optional[bool] = None) -> FixedType:
    """The narrowest exact type of step ``2^-fraction`` whose range holds ``[low, high]``
    (signed when ``low < 0`` unless ``signed`` says)."""
    signed = low < 0 if signed is None else signed
    step = 2.0 ** -fraction
    top = max(float(high), 0.0) + step
    bottom = -min(float(low), 0.0)
    need = max(top, bottom if signed else 0.0, step)
    integer = math.ceil(math.log2(need)) + (1 if signed else 0)
    t = FixedType(signed, integer, fraction)
    while t.high < high or t.low > low:  # log2 rounding at the edges
        t = dataclasses.replace(t, integer=t.integer + 1)
    while t.width > 1 and dataclasses.replace(t, integer=t.integer - 1).high >= high \
            and dataclasses.replace(t, integer=t.integer - 1).low <= low:
        t = dataclasses.replace(t, integer=t.integer - 1)
    return t


def union(types: Iterable[FixedType]) -> FixedType:
    """The narrowest exact type that holds every value of every type (a concatenation)."""
    types = list(types)
    fraction = max(t.fraction for t in types)
    return covering(min(t.low for t in types), max(t.high for t in types), fraction,
                    signed=any(t.signed for t in types))


def of_values(values: np.ndarray, max_fraction: int = 64) -> FixedType:
    """The narrowest exact type that holds ``values`` (float constants: weights, biases)."""
    v = np.asarray(values, np.float64).ravel()
    fraction = 0
    while fraction < max_fraction and np.any(v * 2.0 ** fraction != np.round(v * 2.0 ** fraction)):
        fraction += 1
    while fraction > -64 and np.all(v * 2.0 ** (fraction - 1) == np.round(v * 2.0 ** (fraction - 1))) \
            and np.any(v != 0):
        fraction -= 1
    if not np.any(v != 0):
        fraction = 0
    return covering(float(v.min(initial=0.0)), float(v.max(initial=0.0)), fraction)
