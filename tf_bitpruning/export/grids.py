"""Grid specs: what every quantized tensor becomes in the export graph.

- a b-bit kernel becomes ``fake_quant(num_bits=8, narrow_range=True)`` of the
  already b-bit-quantized kernel over ``[-127·s', 127·s']`` (per output channel
  where the layer has per-channel scales): at most ``2^b - 1`` int8 codes.
  ``s'`` is the b-bit step ``s``, or ``s / 2^j`` with ``code_limit`` (the
  ``fine_bias`` option of :func:`export_tflite`);
- a b-bit activation with grid ``lo + k·step`` (``k = 0 .. 2^b-1``) becomes
  ``maximum(x, lo)`` followed by ``fake_quant`` over ``[hi - 255·step, hi]``,
  ``hi = lo + (2^b-1)·step``: the int8 saturation at 127 is the clip at the learned
  max, the ``maximum`` the clip at the learned min (fused into a preceding ReLU
  when ``lo = 0``), so at most ``2^b`` int8 codes occur.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tf_bitpruning import quant_ops
from tf_bitpruning.export.checks import ExportError
from tf_bitpruning.quantizers import ActivationBitQuantizer, BitlengthQuantizer, WeightBitQuantizer


@dataclasses.dataclass(frozen=True)
class ActivationExport:
    """A b-bit activation grid ``lo + k·step``, ``k = 0 .. 2^b - 1``; calling it quantizes onto it."""

    bits: int
    lo: float
    step: float

    @property
    def hi(self) -> float:
        return self.lo + (2.0 ** self.bits - 1.0) * self.step

    def __call__(self, x: tf.Tensor, lower_bound: Optional[float] = None, quantize_first: bool = False) -> tf.Tensor:
        """Quantizes ``x`` onto the grid.

        ``lower_bound``: a bound ``x`` is known to respect (no clip op where it is
        ``>= lo``). ``quantize_first``: ``x`` is quantized first and clipped after,
        in int8 (exact: ``lo`` is a grid point, so clipping commutes with rounding),
        so that the op producing ``x`` writes this grid and rounds once: for a float
        tensor of the file (the model input, float preprocessing), whose QUANTIZE op
        calibration data would otherwise give a grid of its own; for a MEAN, which
        would otherwise keep its input's scale (EfficientNet's squeeze: 19x coarser
        than its learned grid, 94 % of its outputs off)."""
        nonnegative = getattr(getattr(x, "op", None), "type", None) in ("Relu", "Relu6")
        if nonnegative:
            lower_bound = max(0.0, lower_bound if lower_bound is not None else 0.0)
        x = tf.cast(x, tf.float32)
        clip = self.bits < 8 and not (lower_bound is not None and lower_bound >= self.lo)
        if clip and quantize_first:
            x = self._fake_quant(x)
        if clip:
            # The int8 range ends at the b-bit max (saturation clips there); clip below
            # (not after a ReLU: a second activation would not fuse, leaving a float RELU).
            x = tf.nn.relu(x) if self.lo == 0.0 else tf.maximum(x, self.lo)
        return self._fake_quant(x)

    def relu(self, x: tf.Tensor, quantize_first: bool = True) -> tf.Tensor:
        """``relu(x)`` quantized onto the grid, with ``x`` quantized onto it first (exact:
        ``0`` and ``lo`` are grid points). Several layers that take the relu of one
        tensor onto grids of their own then run RELU ops of their own: identical RELU
        ops would be merged into one, whose output has no range (it runs in float).
        Without ``quantize_first`` (``x`` from an op of the layer's own, which the relu
        fuses into): one rounding, at the end."""
        x = tf.cast(x, tf.float32)
        if quantize_first:
            x = self._fake_quant(x)
        x = tf.nn.relu(x) if self.lo <= 0.0 else tf.maximum(x, self.lo)
        return self._fake_quant(x)

    def _fake_quant(self, x: tf.Tensor) -> tf.Tensor:
        top = self.hi
        return tf.quantization.fake_quant_with_min_max_vars(
            x, top - 255.0 * self.step, top, num_bits=8, narrow_range=False)

    @property
    def refine_shift(self) -> int:
        """The largest ``i`` with ``(2^b - 1)·2^i <= 255``."""
        return int(np.floor(np.log2(255.0 / (2.0 ** self.bits - 1.0))))


@dataclasses.dataclass(frozen=True)
class WeightExport:
    """A b-bit kernel and its int8 step(s); :meth:`tensor` is its fake-quantized constant."""

    kernel: np.ndarray        # b-bit quantized kernel, BN factor folded in
    scale: np.ndarray         # int8 step: scalar, or one per output channel (layout below)
    channel_axes: Tuple[int, ...]  # kernel axes of the output channels (per-channel scale)
    multiplier: np.ndarray    # stored code = b-bit integer × multiplier (like scale)
    max_multiplier: Optional[np.ndarray] = None  # the largest the container holds (like scale)

    def __post_init__(self):
        for field in dataclasses.fields(self):  # frozen: the arrays too (change with dataclasses.replace)
            value = getattr(self, field.name)
            if isinstance(value, np.ndarray):
                value.setflags(write=False)

    def tensor(self, shape: Optional[Sequence[int]] = None) -> tf.Tensor:
        """The fake-quantized kernel (reshaped to ``shape``, output channels last)."""
        kernel = tf.constant(self.kernel if shape is None else self.kernel.reshape(shape), tf.float32)
        if self.scale.ndim == 0:
            s = float(self.scale)
            return tf.quantization.fake_quant_with_min_max_vars(
                kernel, -127.0 * s, 127.0 * s, num_bits=8, narrow_range=True)
        rank = len(kernel.shape)
        channel = [a % rank for a in self.channel_axes] if shape is None else [rank - 1]
        if channel == list(range(rank - len(channel), rank)):
            # Output channels are the trailing axes (Dense, Conv, DepthwiseConv2D):
            # flatten them into one last axis, as TFLite's filter layout does.
            lead = list(kernel.shape[:rank - len(channel)])
            flat = tf.reshape(kernel, lead + [-1])
            s = self.scale.reshape(-1).astype(np.float32)
            flat = tf.quantization.fake_quant_with_min_max_vars_per_channel(
                flat, -127.0 * s, 127.0 * s, num_bits=8, narrow_range=True)
            return tf.reshape(flat, kernel.shape)
        raise ExportError(f"per-channel weight scales on kernel axes {self.channel_axes} of a "
                          f"{rank}-D kernel (Conv2DTranspose) are not supported by the exporter: "
                          f"TFLite's converter cannot move a per-channel axis. Leave the layer in "
                          f"float (skip_layers) and pass representative_dataset=...")


def _np(x) -> np.ndarray:
    return np.asarray(tf.convert_to_tensor(x).numpy() if not isinstance(x, np.ndarray) else x)


def int_bits(quantizer: BitlengthQuantizer, variables) -> np.ndarray:
    """The (frozen) integer bitlength(s) of a quantizer."""
    return np.round(_np(quantizer.bitlength(variables))).astype(np.int64)


def activation_export(quantizer: ActivationBitQuantizer, variables, where: str) -> ActivationExport:
    """The grid of a frozen activation quantizer (``where`` names it in errors)."""
    bits = int_bits(quantizer, variables)
    if bits.size != 1:
        raise ExportError(f"{where}: per-channel activation bitlengths cannot be exported.")
    b = int(bits.reshape(()))
    rmin, rmax = float(variables["min"].numpy()), float(variables["max"].numpy())
    if not rmax > rmin:
        raise ExportError(
            f"{where}: the activation range is empty (min={rmin}, max={rmax}): the model never "
            f"ran a training step. Train or fine-tune it (model.fit) before exporting.")
    if b > 8:
        raise ExportError(f"{where}: {b}-bit activations do not fit TFLite's int8 container; "
                          f"freeze with max 8 bits (e.g. allowed_bits=(..., 8)).")
    lo, step, _ = quant_ops.activation_grid(tf.constant(rmin), tf.constant(rmax), float(b), quantizer.grid)
    return ActivationExport(b, float(lo.numpy()), float(step.numpy()))


def weight_export(quantizer: WeightBitQuantizer, variables, weight: tf.Variable, where: str,
                   fold: Optional[np.ndarray], code_limit: Optional[int]) -> WeightExport:
    """The b-bit kernel (BN factor folded in) and its int8 scale.

    The scale is the b-bit step divided by a power of two ``2^j``, the largest with
    ``(2^(b-1) - 1)·2^j <= code_limit`` (``None``: ``j = 0``): the stored codes are
    the b-bit integers times ``2^j``, the same ``2^b - 1`` values at most. Any
    multiplier up to ``max_multiplier`` fits the container (the plan picks, per
    channel, the one whose bias grid suits the bias: ``plan_build.fit_bias_codes``).
    """
    bits = int_bits(quantizer, variables)
    if bits.max() > 8:
        raise ExportError(f"{where}: {int(bits.max())}-bit weights do not fit TFLite's int8 "
                          f"container; freeze with max 8 bits.")
    w = tf.cast(weight, tf.float32)
    rank = len(w.shape)
    channel, reduce = quantizer._axes(rank)
    per_channel = quantizer.per_channel_scale or quantizer.per_channel_bits or fold is not None
    axes = reduce if (quantizer.per_channel_scale or quantizer.per_channel_bits) else None
    b = tf.constant(bits.astype(np.float32))
    top = quantizer.clip_value(w, b, axes, variables=variables)  # max|w|, or the clip of clip="mse"/"learned"
    kernel = _np(quant_ops.quantize_weights_int(w, b, axes, top, quantizer.grid))
    scale = _np(quant_ops.weight_scale(w, b, axes, top, quantizer.grid)).astype(np.float64)
    levels = 2.0 ** (bits.astype(np.float64) - 1.0) - 1.0
    multiplier = np.ones_like(levels) if code_limit is None else \
        2.0 ** np.maximum(np.floor(np.log2(code_limit / levels)), 0.0)
    largest = multiplier if code_limit is None else np.maximum(np.floor(code_limit / levels), 1.0)
    if per_channel:
        shape = [kernel.shape[a] if a in channel else 1 for a in range(rank)]
        scale = np.broadcast_to(scale, shape)
        multiplier = np.broadcast_to(multiplier, shape)
        largest = np.broadcast_to(largest, shape)
        # A channel of zeros: any step represents it; keep the bias scale sane.
        zero = np.max(np.abs(kernel), axis=reduce, keepdims=True) == 0
        scale = np.where(zero, 1.0, scale)
        if fold is not None:
            factor = fold.reshape(shape).astype(np.float32)
            kernel = kernel * factor
            scale = scale * np.maximum(np.abs(factor), 1e-30)
        channels = [kernel.shape[a] for a in channel]
        scale, multiplier, largest = scale.reshape(channels), multiplier.reshape(channels), largest.reshape(channels)
    else:
        scale, multiplier, largest = scale.reshape(()), multiplier.reshape(()), largest.reshape(())
    return WeightExport(kernel.astype(np.float32), (scale / multiplier).astype(np.float32), channel,
                        multiplier.astype(np.int64), largest.astype(np.int64))


