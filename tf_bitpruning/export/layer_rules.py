"""Rules about single layers that the export plan and graph share: which tf_keras
layer classes preserve values, fold, merge pairwise; a BatchNormalization's factors
and int8 codes; when TFLite rounds twice; which TFLite op a kernel becomes."""

from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
import tf_keras as keras

from tf_bitpruning import layer_kinds
from tf_bitpruning.configs import BitPruneQuantizeConfig
from tf_bitpruning.export import _compat
from tf_bitpruning.export.checks import ExportError
from tf_bitpruning.export.grids import ActivationExport
from tf_bitpruning.quantizers import WeightBitQuantizer

L = keras.layers


def layer_classes(kinds) -> tuple:
    """The tf_keras layer classes of a table of :mod:`tf_bitpruning.layer_kinds` (for ``isinstance``)."""
    return tuple(getattr(L, kind) for kind in sorted(kinds))


# The tables the export shares with the layout pass (see layer_kinds), as classes.
VALUE_PRESERVING = layer_classes(layer_kinds.VALUE_PRESERVING)
FOLDABLE = layer_classes(layer_kinds.FOLDABLE_PRODUCERS)
SEPARABLE = layer_classes(layer_kinds.SEPARABLE_LAYERS)
PAIRWISE_MERGES = layer_classes(layer_kinds.PAIRWISE_MERGES)
# The TFLite op each kernel layer becomes.
TFLITE_OP = {L.Conv1D: "CONV_2D", L.Conv2D: "CONV_2D", L.DepthwiseConv2D: "DEPTHWISE_CONV_2D",
             L.Dense: "FULLY_CONNECTED", L.Conv2DTranspose: "TRANSPOSE_CONV"}


def bn_factors(bn: L.BatchNormalization, rank: int) -> Tuple[np.ndarray, np.ndarray]:
    """(multiplier, offset) of an inference-mode BatchNormalization: y = x·m + c."""
    axes = [a % rank for a in ([bn.axis] if isinstance(bn.axis, int) else bn.axis)]
    if axes != [rank - 1]:
        raise ExportError(f"BatchNormalization '{bn.name}' normalizes axis {bn.axis}; only the "
                          f"last (channels) axis can be folded.")
    var = bn.moving_variance.numpy().astype(np.float64)
    mean = bn.moving_mean.numpy().astype(np.float64)
    gamma = bn.gamma.numpy().astype(np.float64) if bn.scale else np.ones_like(var)
    beta = bn.beta.numpy().astype(np.float64) if bn.center else np.zeros_like(var)
    m = gamma / np.sqrt(var + bn.epsilon)
    return m, beta - mean * m


def bn_codes(m: np.ndarray, c: np.ndarray, grid: Optional[ActivationExport]) -> np.ndarray:
    """The int8 code ``k`` (1..127) of each channel's BN factor ``m`` in its 1x1
    depthwise conv (filter step ``|m|/k``, exact for any ``k``), chosen so that the
    offset ``c`` falls closest to the int32 bias grid ``input step · |m|/k``.

    With ``k = 127`` everywhere that grid is up to a fifth of an output step wide
    (one code for the whole factor), and rounding ``c`` onto it moved 1.4 % of a
    DenseNet-like stack's post-concatenation outputs a step off; the best ``k``
    of 127 leaves ~1/250 of that."""
    codes = np.full(m.shape, 127, np.int64)
    if grid is None:
        return codes
    k = np.arange(1, 128, dtype=np.float64)
    for i, (mi, ci) in enumerate(zip(np.abs(m), c)):
        if mi == 0:
            continue
        unit = grid.step * mi / k
        error = np.abs(ci - np.round(ci / unit) * unit)
        codes[i] = int(k[np.lexsort((-k, np.round(error / unit.min(), 6)))[0]])  # least error, then largest k
    return codes


def coarsens(source: ActivationExport, target: ActivationExport) -> bool:
    """Whether TFLite requantizes int8 codes from ``source`` onto ``target`` with a
    multiplier below 1/2 (``source.step / target.step``), which it rounds twice: once to an
    integer at ``2^s`` times the output precision, then in the right shift by ``s``."""
    return source.step < 0.5 * target.step * (1.0 + 1e-6)


def is_linear(activation) -> bool:
    activation = _compat.plain_activation(activation)
    return activation is None or getattr(activation, "__name__", "") == "linear"


# Averages: their output is at least the smallest of their inputs' values.
AVERAGES = layer_classes(layer_kinds.GLOBAL_AVERAGES)

# Layers TFLite runs with the output scale of their input (AVERAGE_POOL_2D).
SAME_SCALE = layer_classes(layer_kinds.AVERAGE_POOLINGS)


def as_depthwise(layer) -> bool:
    """A 2-D average pooling exported as depthwise convs (graph.avg_pool_as_depthwise):
    'valid', or 'same' on an input of known height and width; equal strides."""
    pool = _compat.inner(layer)
    if not (isinstance(pool, L.AveragePooling2D) and pool.data_format == "channels_last"):
        return False
    if pool.strides[0] != pool.strides[1]:
        return False  # TensorFlow's CPU depthwise conv (without oneDNN) takes equal strides only
    if pool.padding == "valid":
        return True
    shape = layer.get_input_shape_at(0)
    return len(shape) == 4 and shape[1] is not None and shape[2] is not None


def pool_bands(size: int, pool: int, stride: int, same: bool) -> List[Tuple[int, int, int]]:
    """The outputs of a pooling along one axis, in bands ``(first input, window, outputs)``:
    within a band every window has the same length (``'same'`` windows are cut at the
    borders, and TensorFlow averages over what is left), and output ``j`` of the band
    reads inputs ``first + j·stride .. + window``, so a band is one 'valid' pooling."""
    if not same:
        return [(0, pool, (size - pool) // stride + 1)]
    outputs = -(-size // stride)
    before = max((outputs - 1) * stride + pool - size, 0) // 2
    bands: List[Tuple[int, int, int]] = []
    for i in range(outputs):
        start, end = max(0, i * stride - before), min(size, i * stride - before + pool)
        if bands and bands[-1][1] == end - start and start == bands[-1][0] + bands[-1][2] * stride:
            bands[-1] = (bands[-1][0], bands[-1][1], bands[-1][2] + 1)
        else:
            bands.append((start, end - start, 1))
    return bands


def bitpruned(layer) -> bool:
    """A layer wrapped with one of our quantize configs (tfmot's own fake quants export as they are)."""
    return isinstance(layer, _compat.QuantizeWrapper) and isinstance(layer.quantize_config,
                                                                    BitPruneQuantizeConfig)


def tflite_op(layer, quantizer: WeightBitQuantizer, folded: bool) -> Optional[str]:
    """The builtin op the layer's kernel becomes in the file."""
    op = TFLITE_OP.get(type(_compat.inner(layer)))
    if op == "FULLY_CONNECTED" and (folded or quantizer.per_channel_scale or quantizer.per_channel_bits):
        op = "CONV_2D"  # see graph.dense_as_conv
    return op


def pointwise(layer, quantizer: WeightBitQuantizer, folded: bool) -> bool:
    """Whether the kernel becomes a 1x1, stride-1 CONV_2D (which INT4 packing may
    store as a FULLY_CONNECTED, see :mod:`.layout`)."""
    inner = _compat.inner(layer)
    if type(inner) in (L.Conv1D, L.Conv2D):
        return (all(k == 1 for k in inner.kernel_size) and all(s == 1 for s in inner.strides)
                and inner.groups == 1)
    return isinstance(inner, L.Dense) and tflite_op(layer, quantizer, folded) == "CONV_2D"
