"""tfmot ``Quantizer``s that own a trainable, real-valued bitlength.

Each quantized tensor gets a bitlength variable ``<name>_bits`` created in
``build()``. It stores ``n / bits_lr_multiplier`` and the forward pass reads
``n = bits_lr_multiplier · param`` with the gradient of ``n`` passed to the
parameter unscaled. Hence one optimizer step moves ``n`` by
``bits_lr_multiplier`` times what it moves a weight: with Adam about
``multiplier · lr`` per step, with SGD ``multiplier · lr · ∂L/∂n``. A plain
gradient multiplier would not do this under Adam, whose step ignores gradient
scale. A weight constraint keeps ``n`` in ``[min_bits, max_bits]``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import tensorflow as tf
import tf_keras as keras
from tensorflow_model_optimization.quantization.keras import quantizers as tfmot_quantizers

from tf_bitpruning import quant_learned, quant_ops, shared_graph
from tf_bitpruning.frontend import frontend_for


def variable_key(variable) -> Any:
    """A hashable key of a tf/tf_keras variable or a Keras 3 variable (its TF variable)."""
    return variable.ref() if hasattr(variable, "ref") else variable.value.ref()


# The quantizers' Python control flow depends only on Python values (``training`` is
# the literal True/False tfmot's wrapper passes, ``frozen``, bit ranges), so AutoGraph
# has nothing to convert; left to it, converting every quantizer call (and the
# quant_ops it calls) costs ~20 % of tracing a train step (a 200-quantizer
# keras.applications network: about a minute of one core).
_not_converted = tf.autograph.experimental.do_not_convert


def _add_variable(layer, name: str, shape, value: float, trainable: bool, constraint=None):
    """A float32 variable of ``layer`` (tf_keras or Keras 3) that mixed precision never
    casts (like BatchNormalization's statistics: autocast to float16 the bitlength would
    clash with the float32 quantizer math and move in steps of ~0.005 bits), averaged
    across replicas."""
    return frontend_for(layer).add_variable(layer, name, shape, value, trainable, constraint)


class _ClipParam(keras.constraints.Constraint):
    """Keeps the bitlength parameter inside ``[low, high]`` after every step."""

    def __init__(self, low: float, high: float):
        self.low, self.high = float(low), float(high)

    def __call__(self, w):
        return tf.clip_by_value(w, self.low, self.high)

    def get_config(self):
        return {"low": self.low, "high": self.high}


class BitlengthQuantizer(tfmot_quantizers.Quantizer):
    """Base class: the bitlength variable, its reparametrization and the blend."""

    kind = "tensor"  # "weights" or "activations" in subclasses
    # Set by ``BitLoss.anneal`` (``BitBudget(anneal=...)``): bitlength variable ref ->
    # ``(weight, integer)`` variables; ``bitlength()`` then returns
    # ``(1 - weight) · n + weight · integer``. Keyed by variable because layers share
    # quantizer objects. Runtime state, not config.
    anneal: Optional[Dict[Any, Tuple[tf.Variable, tf.Variable]]] = None

    def __init__(self, min_bits: int, max_bits: int, init_bits: Optional[float] = None,
                 bits_lr_multiplier: float = 10.0, frozen: bool = False, grid: str = "minmax"):
        min_bits, max_bits = int(min_bits), int(max_bits)
        init_bits = max_bits if init_bits is None else init_bits
        if min_bits < 1 or max_bits > 16 or min_bits > max_bits:
            raise ValueError(
                f"{type(self).__name__}: need 1 <= min_bits <= max_bits <= 16, "
                f"got min_bits={min_bits}, max_bits={max_bits}.")
        if not min_bits <= float(init_bits) <= max_bits:
            raise ValueError(
                f"{type(self).__name__}: init_bits={init_bits} is outside "
                f"[min_bits, max_bits] = [{min_bits}, {max_bits}].")
        if not float(bits_lr_multiplier) > 0:
            raise ValueError(f"bits_lr_multiplier must be > 0, got {bits_lr_multiplier}.")
        self.min_bits = min_bits
        self.max_bits = max_bits
        self.init_bits = float(init_bits)
        self.bits_lr_multiplier = float(bits_lr_multiplier)
        self.frozen = bool(frozen)
        self.grid = quant_ops.check_grid(grid)

    # -- the bitlength -------------------------------------------------------
    def bits_shape(self, tensor_shape) -> Tuple[int, ...]:
        return ()

    def _build_bits(self, tensor_shape, name: str, layer) -> tf.Variable:
        k = self.bits_lr_multiplier
        return _add_variable(layer, f"{name}_bits", self.bits_shape(tensor_shape), self.init_bits / k,
                             trainable=not self.frozen,
                             constraint=_ClipParam(self.min_bits / k, self.max_bits / k))

    def bitlength(self, weights: Dict[str, tf.Variable]) -> tf.Tensor:
        """The real-valued bitlength ``n`` (integer once frozen)."""
        param = tf.cast(tf.convert_to_tensor(weights["bits"]), tf.float32)  # one read
        k = self.bits_lr_multiplier
        const = shared_graph.const
        if self.frozen:
            return tf.round(param * const(k))
        low, high = self.min_bits, self.max_bits
        n = shared_graph.call_math(("bitlength", k, low, high),
                                   lambda p: quant_ops.bitlength_from_param(p, k, low, high), param)
        pair = self.anneal.get(variable_key(weights["bits"])) if self.anneal else None
        if pair is not None:
            # n slides to its integer as the weight goes 0 -> 1; so does the blend.
            weight, integer = pair
            n = (shared_graph.const(1.0) - weight) * n + weight * integer  # exactly the integer at weight 1
        return n

    def _math_key(self) -> tuple:
        """What the quantizer math depends on besides its tensors."""
        return (type(self).__name__, self.min_bits, self.max_bits, self.frozen, self.grid)

    def _quantize(self, x, quantize_int, weights, grad_range=None):
        return self._quantize_n(x, quantize_int, self.bitlength(weights), grad_range)

    def _quantize_n(self, x, quantize_int, n, grad_range=None):
        if self.frozen:
            return quant_ops.fixed(x, quantize_int, n, grad_range)
        return quant_ops.blend(x, quantize_int, n, self.min_bits, self.max_bits, grad_range)

    def get_config(self):
        return {
            "min_bits": self.min_bits,
            "max_bits": self.max_bits,
            "init_bits": self.init_bits,
            "bits_lr_multiplier": self.bits_lr_multiplier,
            "frozen": self.frozen,
            **({"grid": self.grid} if self.grid != "minmax" else {}),  # the default config stays what it was
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __eq__(self, other):
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return id(self)


class WeightBitQuantizer(BitlengthQuantizer):
    """Symmetric narrow-range weight quantizer with a learned bitlength.

    Args:
      min_bits, max_bits: the range of the bitlength (weights need at least 2).
      init_bits: the starting bitlength (default ``max_bits``).
      bits_lr_multiplier: how much faster than the weights the bitlength learns.
      per_channel_scale: one scale ``max|w|`` per output channel (else per tensor).
      per_channel_bits: one bitlength per output channel (else one per tensor).
      channel_axes: the kernel axes that index output channels (``(-1,)`` for
        Dense/Conv, ``(2, 3)`` for DepthwiseConv2D).
      frozen: one fixed integer quantizer, bitlength not trainable.
      clip: the top of the grid: ``"max"`` (``max|w|``, min-max as the paper and
        the spec) or ``"mse"`` (per channel or tensor and per integer bitlength, the
        clip value with the least squared error, :func:`quant_ops.mse_clip`; far
        better for ternary kernels, not always at 3 bits (docs/comparison_clip.md);
        exported exactly the same way), or ``"learned"``: a variable ``<name>_clip``
        (per tensor, or channel like the scale) that starts at the ``"mse"`` clip and
        is trained by gradient (LSQ, :func:`quant_learned.learned_clip_term`; weights
        beyond it get no gradient); ``"minmax"`` grid only.
      grid: ``"minmax"`` (the step ``clip / (2^(b-1) - 1)``) or ``"pow2"`` (that
        step rounded up to a power of two: a ``fixed<b, I>`` type, for hls4ml; with
        ``clip="mse"`` the power-of-two step of least squared error,
        :func:`quant_ops.pow2_mse_clip`).

    >>> q = WeightBitQuantizer(init_bits=3)
    """

    kind = "weights"

    def __init__(self, min_bits: int = 2, max_bits: int = 8, init_bits: Optional[float] = None,
                 bits_lr_multiplier: float = 10.0, per_channel_scale: bool = False,
                 per_channel_bits: bool = False, channel_axes: Sequence[int] = (-1,),
                 frozen: bool = False, clip: str = "max", grid: str = "minmax"):
        if int(min_bits) < 2:
            raise ValueError(f"WeightBitQuantizer: min_bits must be >= 2 (2 bits is ternary), got {min_bits}.")
        super().__init__(min_bits, max_bits, init_bits, bits_lr_multiplier, frozen, grid)
        self.per_channel_scale = bool(per_channel_scale)
        self.per_channel_bits = bool(per_channel_bits)
        self.channel_axes = tuple(int(a) for a in channel_axes)
        if clip not in quant_ops.WEIGHT_CLIPS:
            raise ValueError(f"WeightBitQuantizer: clip must be one of {quant_ops.WEIGHT_CLIPS}, got {clip!r}.")
        if clip == "learned" and self.grid != "minmax":
            raise ValueError(f"WeightBitQuantizer: clip='learned' needs grid='minmax', got grid={grid!r}.")
        self.clip = clip

    def _axes(self, rank: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        channel = tuple(sorted(a % rank for a in self.channel_axes))
        reduce = tuple(a for a in range(rank) if a not in channel)
        return channel, reduce

    def bits_shape(self, tensor_shape) -> Tuple[int, ...]:
        if not self.per_channel_bits:
            return ()
        shape = list(tensor_shape)
        channel, _ = self._axes(len(shape))
        # Keep the reduced axes as size 1 so the bitlength broadcasts.
        return tuple(shape[a] if a in channel else 1 for a in range(len(shape)))

    def build(self, tensor_shape, name, layer):
        variables = {"bits": self._build_bits(tensor_shape, name, layer)}
        if self.clip == "learned":
            channel, _ = self._axes(len(tensor_shape))
            per_channel = self.per_channel_scale or self.per_channel_bits
            shape = tuple(d if a in channel else 1 for a, d in enumerate(tensor_shape)) if per_channel else ()
            variables["clip"] = _add_variable(layer, f"{name}_clip", shape, 0.0, trainable=True)
        return variables

    def _learned_clip(self, w, n, variables, training, reduce_axes) -> tf.Tensor:
        """The learned clip, the ``"mse"`` clip at ``round(n)`` until it is set (by the first training call)."""
        c = tf.convert_to_tensor(variables["clip"])
        c = tf.cond(tf.reduce_all(c > 0.0), lambda: c,
                    lambda: quant_ops.mse_clip(w, tf.round(tf.stop_gradient(n)), reduce_axes) + 0.0 * c)
        if not training:
            return c
        with tf.control_dependencies([variables["clip"].assign(c)]):
            return tf.identity(c)

    def clip_value(self, w, bits, reduce_axes=None, w_max=None, variables=None) -> tf.Tensor:
        """The grid's top level at integer ``bits`` (the scale is it over ``2^(b-1) - 1``):
        ``max|w|`` (``w_max`` if known), with ``clip="mse"`` the least-error clip (with
        ``grid="pow2"`` the least-error power-of-two step's), with ``clip="learned"`` the
        clip variable of ``variables``."""
        if self.clip == "mse" and self.grid == "pow2":
            return quant_ops.pow2_mse_clip(w, bits, reduce_axes, w_max)
        if self.clip == "mse":
            return quant_ops.mse_clip(w, bits, reduce_axes, w_max)
        if self.clip == "learned":
            return self._learned_clip(w, bits, variables, False, reduce_axes)
        return quant_ops.max_abs(w, reduce_axes) if w_max is None else w_max

    @_not_converted
    def __call__(self, inputs, training, weights, **kwargs):
        x = tf.cast(tf.convert_to_tensor(inputs), tf.float32)  # the kernel read once
        reduce_axes = None
        if self.per_channel_scale or self.per_channel_bits:
            _, reduce_axes = self._axes(len(x.shape))

        n = self.bitlength(weights)
        learned = self.clip == "learned"
        clip = self._learned_clip(x, n, weights, training, reduce_axes) if learned else tf.zeros(())

        def math(x, n, clip):
            # Once, shared by both integer quantizers: the kernel without gradient, max|w|.
            w = tf.stop_gradient(x)
            w_max = quant_ops.max_abs(w, reduce_axes)

            top = tf.stop_gradient(clip)

            def quantize_int(b):
                # quant_ops.quantize_weights_int, its levels computed once
                return quant_ops.quantize_weights_levels(
                    w, quant_ops.weight_levels(b), top if learned else self.clip_value(w, b, reduce_axes, w_max),
                    self.grid)

            if not learned:
                return self._quantize_n(x, quantize_int, n)
            out = self._quantize_n(x, quantize_int, n, (-top, top))
            return out + quant_learned.learned_clip_term(w, clip, n, self.min_bits, self.max_bits, self.frozen)

        key = ("weights", reduce_axes, self.clip, self._math_key())
        return tf.cast(shared_graph.call_math(key, math, x, tf.cast(n, tf.float32), clip), inputs.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(per_channel_scale=self.per_channel_scale,
                      per_channel_bits=self.per_channel_bits,
                      channel_axes=list(self.channel_axes))
        if self.clip != "max":  # the default config stays what it was
            config.update(clip=self.clip)
        return config


class ActivationBitQuantizer(BitlengthQuantizer):
    """Asymmetric activation quantizer with a learned bitlength and a tracked
    ``[min, max]`` range (0 kept representable).

    The range starts at the first training batch's min/max. ``range_update="ema"``
    (the default, as tfmot's ``MovingAverageQuantizer``) then follows the batches'
    min/max at the moving-average rate (``ema_decay``); ``"expand"`` takes in at once
    any batch value beyond the range and shrinks back at that rate. Values beyond the
    range are clipped and get no gradient, so a moving-average range caps how fast
    activations can grow: a network trained from random weights whose activations
    must grow a lot (VGG16, no normalization: logits near 1e-3 at the start) stays at
    chance unless ranges expand. Expanded ranges sit at the batches' largest values,
    a coarser grid: at 2-3 bits on small networks they cost accuracy (README).
    ``freeze_range=True`` stops the updates (useful when fine-tuning a frozen model).
    ``range_update="learned"``: the range starts at the first training batch's min/max,
    then is trained by gradient (LSQ, ``quant_learned.learned_range_term``; also when frozen,
    ``freeze_range`` aside), so 2-bit grids skip outliers; exported as any range.
    ``grid="pow2"``: the step is a power of two and the grid a ``ufixed<b, I>``
    (``min >= 0``) or ``fixed<b, I>`` type covering the range (``quant_ops.activation_grid``).
    Before the first training step the range is empty and the quantizer passes values
    through.
    """

    kind = "activations"
    RANGE_UPDATES = ("expand", "ema", "learned")

    def __init__(self, min_bits: int = 1, max_bits: int = 8, init_bits: Optional[float] = None,
                 bits_lr_multiplier: float = 10.0, ema_decay: float = 0.99,
                 freeze_range: bool = False, frozen: bool = False, range_update: str = "ema",
                 grid: str = "minmax"):
        super().__init__(min_bits, max_bits, init_bits, bits_lr_multiplier, frozen, grid)
        if not 0.0 <= float(ema_decay) < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}.")
        if range_update not in self.RANGE_UPDATES:
            raise ValueError(f"range_update (bitprune_model's activation_range) must be one of "
                             f"{self.RANGE_UPDATES}, got {range_update!r}.")
        if range_update == "learned" and self.grid != "minmax":
            raise ValueError(f"range_update (bitprune_model's activation_range) 'learned' needs grid='minmax' "
                             f"(a power-of-two step has no gradient), got grid={grid!r}.")
        self.ema_decay = float(ema_decay)
        self.freeze_range = bool(freeze_range)
        self.range_update = range_update

    def build(self, tensor_shape, name, layer):
        def range_var(suffix):
            return _add_variable(layer, f"{name}_{suffix}", (), 0.0, trainable=self.range_update == "learned")

        return {"bits": self._build_bits(tensor_shape, name, layer),
                "min": range_var("min"), "max": range_var("max")}

    @staticmethod
    def _global_min_max(batch_min, batch_max):
        """The min/max over the global batch under ``tf.distribute``.

        Each replica sees only its slice of the batch; without this the MEAN
        aggregation of the range variables would average per-replica extremes,
        so N devices would not train like one. ``ReduceOp`` has no MIN/MAX, so
        the replicas all-gather ``(-min, max)`` and reduce locally.
        """
        ctx = tf.distribute.get_replica_context()
        if ctx is None or ctx.num_replicas_in_sync == 1:
            return batch_min, batch_max
        gathered = ctx.all_gather(tf.stack([-batch_min, batch_max])[tf.newaxis], axis=0)
        extremes = tf.reduce_max(gathered, axis=0)
        return -extremes[0], extremes[1]

    def _update_range(self, x, weights):
        batch_min, batch_max = shared_graph.call_math(("batch_range",), quant_ops.batch_range, x)
        batch_min, batch_max = self._global_min_max(batch_min, batch_max)
        min_var, max_var = weights["min"], weights["max"]
        old_min, old_max = tf.convert_to_tensor(min_var), tf.convert_to_tensor(max_var)  # one read each
        if self.range_update == "learned":  # the first batch's range, then the variables (with gradient)
            started = old_max > old_min
            new = tf.where(started, old_min, batch_min), tf.where(started, old_max, batch_max)
            with tf.control_dependencies([min_var.assign(new[0]), max_var.assign(new[1])]):
                return tf.identity(new[0]), tf.identity(new[1])
        decay, expand = self.ema_decay, self.range_update == "expand"
        new_min, new_max = shared_graph.call_math(
            ("moving_range", decay, expand), lambda *t: quant_ops.moving_range(*t, decay, expand),
            old_min, old_max, batch_min, batch_max)
        # The values read back after the assigns (under tf.distribute, the aggregated ones), once each.
        return tf.convert_to_tensor(min_var.assign(new_min)), tf.convert_to_tensor(max_var.assign(new_max))

    @_not_converted
    def __call__(self, inputs, training, weights, **kwargs):
        x = tf.cast(inputs, tf.float32)
        if training and not (self.freeze_range and self.range_update != "learned"):
            range_min, range_max = self._update_range(tf.stop_gradient(x), weights)
        else:
            range_min = tf.identity(weights["min"])
            range_max = tf.identity(weights["max"])

        n = tf.cast(self.bitlength(weights), tf.float32)
        learned = training and self.range_update == "learned"

        def math(x, n, range_min, range_max):
            # quant_ops.quantize_activations_int, x without gradient and the clamped
            # range computed once for both integer quantizers.
            x_int = tf.stop_gradient(x)
            low, high = quant_ops.clamp_range(range_min, range_max)

            def quantize_int(b):
                return quant_ops.quantize_activations_clamped(x_int, low, high, b, self.grid)

            # STE: gradient 1 inside the range, 0 outside (where the grid clips).
            grad_range = (low, tf.maximum(range_max, shared_graph.const(0.0)))
            out = self._quantize_n(x, quantize_int, n, grad_range)
            if learned:
                out += quant_learned.learned_range_term(x_int, low, high, n, self.min_bits, self.max_bits, self.frozen)
            return out

        def quantize(x=x):
            return shared_graph.call_math(("activations", learned, self._math_key()), math, x, n, range_min, range_max)

        if training:
            out = quantize()
        else:
            out = tf.cond(range_max > range_min, quantize, lambda: x)
        return tf.cast(out, inputs.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(ema_decay=self.ema_decay, freeze_range=self.freeze_range,
                      range_update=self.range_update)
        return config
