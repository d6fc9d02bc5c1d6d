"""The options of bit pruning (``bitprune_apply``'s keywords), in one record that both
front ends take: :func:`tf_bitpruning.bitprune_model` checks them once and hands them on."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

from tf_bitpruning.quantizers import ActivationBitQuantizer, WeightBitQuantizer


@dataclasses.dataclass(frozen=True)
class BitPruneOptions:
    """The quantizer options of :func:`tf_bitpruning.bitprune_apply` (the same names and
    defaults; ``tests/test_api.py`` checks that they agree)."""

    weight_bits: Tuple[int, int] = (2, 8)
    activation_bits: Tuple[int, int] = (1, 8)
    init_bits: Optional[float] = None
    bits_lr_multiplier: float = 10.0
    per_channel_bits: bool = False
    quantize_inputs: bool = True
    quantize_outputs: bool = True
    weight_clip: str = "max"
    activation_range: str = "ema"
    grid: str = "minmax"

    @classmethod
    def of(cls, what: str, options: Dict[str, Any]) -> "BitPruneOptions":
        """The options given as keywords to ``what``; an unknown one is a ``TypeError``."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(f"{what}: unexpected options {unknown}; the options are {known}.")
        return cls(**options)

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def quantizers(self) -> Tuple[WeightBitQuantizer, ActivationBitQuantizer]:
        """The weight and activation quantizer templates (the options checked)."""
        w_lo, w_hi = _check_bits("weight_bits", self.weight_bits, 2)
        a_lo, a_hi = _check_bits("activation_bits", self.activation_bits, 1)
        init = self.init_bits
        for what, lo, hi in (("weight_bits", w_lo, w_hi), ("activation_bits", a_lo, a_hi)):
            if init is not None and not lo <= float(init) <= hi:
                raise ValueError(f"init_bits={init} is outside {what}=({lo}, {hi}).")
        return (WeightBitQuantizer(w_lo, w_hi, init, self.bits_lr_multiplier,
                                   per_channel_bits=self.per_channel_bits, clip=self.weight_clip, grid=self.grid),
                ActivationBitQuantizer(a_lo, a_hi, init, self.bits_lr_multiplier,
                                       range_update=self.activation_range, grid=self.grid))


def _check_bits(what: str, bits: Tuple[int, int], lowest: int) -> Tuple[int, int]:
    try:
        lo, hi = (int(b) for b in bits)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a pair (min_bits, max_bits), got {bits!r}.") from None
    if lo > hi:
        raise ValueError(f"{what}: min_bits={lo} > max_bits={hi}.")
    if lo < lowest or hi > 16:
        raise ValueError(f"{what}=({lo}, {hi}) is outside the supported [{lowest}, 16].")
    return lo, hi
