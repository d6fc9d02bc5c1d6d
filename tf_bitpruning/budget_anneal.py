"""BitBudget's annealing schedule, in plain Python (no TensorFlow, no Keras).

The learning phase ends at integer bitlengths: over the last ``share`` of the
planned epochs (or, with ``stop_when_met``, over the epochs after the budget is
met) every learned bitlength ``n`` slides linearly to its chosen integer ``b``:

    n ← (1 - p) · n + p · b,    p = clip((position - begin) / epochs, 0, 1)

where ``position`` is the epoch index plus the share of its steps done. The
quantizers compute the slide (``BitLoss.anneal_weight`` is ``p``, see
``BitlengthQuantizer.bitlength``); :func:`slide` is the same formula in NumPy.
Positions are absolute epoch indices, so a resumed ``fit`` continues the same schedule.

>>> schedule = AnnealSchedule.planned(share=0.25, epochs=8, stop_when_met=False)
>>> schedule
AnnealSchedule(begin=6.0, epochs=2.0)
>>> schedule.progress(epoch=6, batch=4, steps=10), schedule.progress(epoch=7, batch=9, steps=10)
(0.25, 1.0)
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np


class AnnealSchedule(NamedTuple):
    """When annealing begins and how long it lasts, in epochs; ``epochs == 0``: never."""

    begin: float = math.inf  # epoch index + share of its steps
    epochs: float = 0.0

    @classmethod
    def planned(cls, share: float, epochs: Optional[int], stop_when_met: bool) -> "AnnealSchedule":
        """The last ``share`` of ``epochs`` planned epochs; none without a share, a
        known number of epochs, or with ``stop_when_met`` (see :meth:`after_met`)."""
        if share > 0 and epochs and not stop_when_met:
            length = share * epochs
            return cls(epochs - length, length)
        return cls()

    @classmethod
    def after_met(cls, share: float, epoch: int, epochs: int) -> "AnnealSchedule":
        """From the end of ``epoch`` (where the budget was met), for ``share`` of the
        ``epochs`` planned epochs, rounded up to at least one."""
        return cls(epoch + 1.0, float(max(1, math.ceil(share * epochs))))

    @property
    def active(self) -> bool:
        """Whether annealing is scheduled at all."""
        return self.epochs > 0

    def progress(self, epoch: int, batch: int, steps: Optional[int]) -> float:
        """``p`` after training step ``batch`` of ``epoch`` (of ``steps`` per epoch;
        unknown: the epoch's start)."""
        if self.epochs <= 0:
            return 0.0
        position = epoch + ((batch + 1) / steps if steps else 0.0)
        return float(np.clip((position - self.begin) / self.epochs, 0.0, 1.0))

    def done_after(self, epoch: int) -> bool:
        """Whether annealing is complete at the end of ``epoch``."""
        return epoch + 1 >= self.begin + self.epochs


def slide(learned: np.ndarray, integer: np.ndarray, progress: float) -> np.ndarray:
    """The bitlength at ``progress`` ``p``: ``(1 - p) · n + p · b`` (exactly ``b`` at 1)."""
    return (1.0 - progress) * np.asarray(learned) + progress * np.asarray(integer)
