"""Checks shared by the TFLite tests: machine-independent output agreement and
corrupted-file fuzzing of the precision metadata reader.

Agreement. A frozen model's outputs lie on a grid (the output quantizer's step),
and so do a ``.tflite`` file's. Two correct implementations (Keras' float
fake-quantization, TFLite's integer kernels; XNNPACK or the builtin ones) can
still round a value that sits on a grid midpoint differently, and which values sit
there depends on the CPU (oneDNN kernels, thread count) that trained the model. So
an output may move by a step, and where the reference's top two outputs are within
a few steps of each other (a tie, or nearly) ``argmax`` may pick another index.
:func:`top1_agreement` therefore compares top-1 only on examples whose reference
margin is larger than what such rounding can move, and counts the others (ties)
apart so that a test can bound them.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Iterator, List, Tuple

import numpy as np


@dataclasses.dataclass
class Agreement:
    """Top-1 agreement of ``got`` with ``ref`` where ``ref`` decides (see module doc)."""

    decided: int          # examples whose reference top-2 margin exceeds the tie margin
    agreeing: int         # of those, how many have the same top-1
    ties: int             # examples counted apart (margin within the tie margin)
    off_grid: int         # examples with some output more than `tolerance` steps from ref
    max_diff_steps: float  # the largest |got - ref| in output steps

    @property
    def total(self) -> int:
        return self.decided + self.ties

    @property
    def rate(self) -> float:
        """Top-1 agreement on the decided examples."""
        return self.agreeing / max(self.decided, 1)

    @property
    def tie_rate(self) -> float:
        return self.ties / max(self.total, 1)

    @property
    def off_grid_rate(self) -> float:
        return self.off_grid / max(self.total, 1)


def top1_agreement(got: np.ndarray, ref: np.ndarray, step: float, tolerance: float = 1.0) -> Agreement:
    """Compares two ``(examples, classes)`` outputs on a grid of ``step``.

    ``tolerance`` (in steps) is how far one output may move by rounding alone; an
    example is *decided* when its reference top-2 margin exceeds twice that (the top
    output down and the runner-up up by ``tolerance`` each cannot swap them).
    """
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape or got.ndim != 2:
        raise ValueError(f"need two (examples, classes) arrays of one shape, got {got.shape} and {ref.shape}")
    if not step > 0:
        raise ValueError(f"step must be > 0, got {step}")
    top2 = np.sort(ref, axis=1)[:, -2:]
    margin = (top2[:, 1] - top2[:, 0]) / step
    # 1e-3 step of slack: outputs on the grid are k * step up to float rounding.
    decided = margin > 2 * tolerance + 1e-3
    same = got.argmax(1) == ref.argmax(1)
    diff = np.abs(got - ref).max(axis=1) / step
    return Agreement(decided=int(decided.sum()), agreeing=int((same & decided).sum()),
                     ties=int((~decided).sum()), off_grid=int((diff > tolerance + 1e-3).sum()),
                     max_diff_steps=float(diff.max()))


# -- metadata fuzzing ------------------------------------------------------------------------------

def corruptions(data: bytes, count: int, seed: int, hot: Tuple[bytes, ...] = ()) -> Iterator[Tuple[str, bytes]]:
    """``count`` damaged copies of ``data`` (fixed ``seed``): truncations, random byte
    flips anywhere, and byte flips inside the ``hot`` substrings (e.g. the metadata
    name and JSON, where a flip makes invalid UTF-8 or JSON)."""
    rng = np.random.default_rng(seed)
    spans = []
    for needle in hot:
        start = data.find(needle)
        if start < 0:
            raise ValueError(f"{needle[:40]!r} is not in the file")
        spans.append((start, start + len(needle)))
    kinds = 3 if spans else 2
    for i in range(count):
        kind = i % kinds
        if kind == 0:
            cut = int(rng.integers(0, len(data)))
            yield f"truncated to {cut} bytes", data[:cut]
            continue
        low, high = (0, len(data)) if kind == 1 else spans[int(rng.integers(len(spans)))]
        damaged = bytearray(data)
        positions = rng.integers(low, high, size=int(rng.integers(1, 5)))
        for p in positions:
            damaged[p] ^= int(rng.integers(1, 256))
        yield f"bytes {sorted(int(p) for p in positions)} flipped", bytes(damaged)


def fuzz_reader(read: Callable[[str], object], expected_error: type, data: bytes, directory: Path,
                count: int, seed: int, hot: Tuple[bytes, ...] = ()) -> Tuple[int, int]:
    """Runs ``read`` on ``count`` corruptions of ``data``. Returns ``(raised, read)``
    counts; fails listing every corruption that raised anything but ``expected_error``."""
    path = os.path.join(directory, "damaged.tflite")
    escaped: List[str] = []
    raised = 0
    for what, damaged in corruptions(data, count, seed, hot):
        with open(path, "wb") as f:
            f.write(damaged)
        try:
            read(path)
        except expected_error as e:
            raised += 1
            assert str(e), what  # a message that says something
        except Exception as e:  # noqa: BLE001  (the point: nothing else may escape)
            escaped.append(f"{what}: {type(e).__name__}: {e}")
    assert not escaped, f"{len(escaped)} of {count} damaged files escaped {expected_error.__name__}:\n" + \
        "\n".join(escaped[:10])
    return raised, count - raised
