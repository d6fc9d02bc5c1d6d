"""The bit-pruning ``QuantizeScheme``: a registry (layer class -> config) and the
layout transform (:mod:`tf_bitpruning.layout`), plugged into tfmot's ``quantize_apply``.

Placement of quantizers (what TFLite executes, as in tfmot's 8-bit scheme):
- kernels of Dense, Conv1D/2D, Conv2DTranspose, DepthwiseConv2D and
  SeparableConv1D/2D get a :class:`WeightBitQuantizer` each (per-channel scale for
  convolutions, per-tensor for Dense);
- a SeparableConv2D is split into ``<name>_depthwise`` (DepthwiseConv2D) and
  ``<name>_pointwise`` (a 1x1 Conv2D with the bias and activation), as tfmot's
  8-bit scheme does: the tensor between its kernels, which TFLite keeps between
  two ops, gets a learned grid (the depthwise output quantizer) like any other.
  A SeparableConv2D with a config of the user's own is left whole, and so is a
  SeparableConv1D (its inner tensor stays float: its export needs
  ``representative_dataset=``);
- a layer's output activation gets an :class:`ActivationBitQuantizer`, except where
  its only consumer re-quantizes the same values right away in a way the exported
  file reproduces (ReLU, LeakyReLU, Concatenate; an Activation that TFLite fuses
  or tfmot quantizes first; a BatchNormalization after a conv/dense kernel, which
  the exporter folds; a Concatenate keeps its own before an activation, which
  TFLite cannot fuse into it): there the consumer's quantizer is the one that counts. So ``Conv2D -> BatchNormalization -> ReLU`` quantizes the conv
  kernel and the ReLU output: **BatchNormalization is quantized after, not
  folded**. The float BN scale is folded into the per-channel conv scale at
  export, which keeps the b-bit grid exact;
- pass-through layers (Flatten, Reshape, Dropout, MaxPooling, padding, ...) are
  not quantized; the model inputs get an activation quantizer of their own;
- preprocessing (``Rescaling``, ``Normalization``) right after a model input runs
  in float: the input quantizer moves to the end of that chain (TFLite runs the
  few float ops on the input, then QUANTIZE); elsewhere its output is quantized;
- ``TFOpLambda`` elementwise math (``x + 3``, ``x * (1/6)``, ``tf.nn.relu6``, ...)
  quantizes its output; reshaping ops and slicing pass through. Activations that
  tfmot's quantize-aware activation does not know (``relu6``, ``hard_sigmoid``,
  ``elu``, ...) are supported in ``Activation`` layers, with the output quantized.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import tensorflow_model_optimization as tfmot

from tf_bitpruning import _compat
from tf_bitpruning.configs import BitPruneQuantizeConfig
from tf_bitpruning.quantizers import ActivationBitQuantizer, WeightBitQuantizer

# The registry is data keyed by class name, so that one table serves tf_keras and
# Keras 3 layers alike (see :func:`builtin_kind`).
# class -> (kernel attrs with their output-channel axes, per-channel scale)
_KERNEL_LAYERS: Dict[str, Tuple[Dict[str, Tuple[int, ...]], bool]] = {
    "Dense": ({"kernel": (-1,)}, False),
    "Conv1D": ({"kernel": (-1,)}, True),
    "Conv2D": ({"kernel": (-1,)}, True),
    "Conv2DTranspose": ({"kernel": (2,)}, True),
    "DepthwiseConv2D": ({"depthwise_kernel": (2, 3)}, True),
    "SeparableConv1D": ({"depthwise_kernel": (1, 2), "pointwise_kernel": (-1,)}, True),
    "SeparableConv2D": ({"depthwise_kernel": (2, 3), "pointwise_kernel": (-1,)}, True),
}

# Keras 3 names some kernels differently: class -> {tf_keras attribute: Keras 3 attribute}.
_KERAS3_KERNEL_ATTRS: Dict[str, Dict[str, str]] = {"DepthwiseConv2D": {"depthwise_kernel": "kernel"}}

_OUTPUT_LAYERS = frozenset({
    "ReLU", "LeakyReLU", "BatchNormalization", "Add", "Subtract", "Multiply", "Average",
    "Maximum", "Minimum", "Concatenate", "AveragePooling1D", "AveragePooling2D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "UpSampling1D", "UpSampling2D",
})

_PASS_THROUGH_LAYERS = frozenset({
    "InputLayer", "Flatten", "Reshape", "Permute", "Dropout", "SpatialDropout1D",
    "SpatialDropout2D", "ActivityRegularization", "MaxPooling1D", "MaxPooling2D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "ZeroPadding1D", "ZeroPadding2D",
    "Cropping1D", "Cropping2D", "Softmax", "Identity",
})

# Run in float when they follow a model input (the input quantizer moves after them).
PREPROCESSING_LAYERS = frozenset({"Rescaling", "Normalization"})

# TFOpLambda / SlicingOpLambda functions (their config's "function"), as data:
# elementwise math whose output is quantized, and ops that only move values.
_TF_OP_OUTPUT = frozenset({
    "__operators__.add", "math.add", "math.add_n", "math.subtract", "math.multiply",
    "math.truediv", "math.divide", "math.negative", "math.maximum", "math.minimum",
    "clip_by_value", "nn.relu", "nn.relu6", "nn.leaky_relu", "nn.silu", "nn.swish",
    "math.sigmoid", "nn.sigmoid", "math.tanh", "nn.tanh", "nn.gelu", "concat",
    "math.reduce_mean", "nn.avg_pool2d",
})
_TF_OP_PASS_THROUGH = frozenset({
    "__operators__.getitem", "reshape", "identity", "expand_dims", "squeeze",
    "compat.v1.squeeze", "transpose", "compat.v1.transpose", "nn.max_pool2d",
    "math.reduce_max", "image.resize", "nn.depth_to_space", "nn.space_to_depth",
})
_OP_LAMBDAS = ("TFOpLambda", "SlicingOpLambda", "ElementwiseOpLambda")

# Activations tfmot's quantize-aware activation does not know, supported in an
# ``Activation`` layer by quantizing the layer's output.
_OUTPUT_ACTIVATIONS = frozenset({
    "relu6", "hard_sigmoid", "hard_swish", "elu", "selu", "softplus", "softsign", "mish",
    "exponential", "silu", "leaky_relu",
})



def builtin_kind(layer, exact: bool = True) -> Optional[str]:
    """The class name of a built-in Keras layer (tf_keras or Keras 3), e.g. ``"Conv2D"``; None
    for other classes. ``exact=False``: the nearest built-in base class (``isinstance``)."""
    for cls in type(layer).__mro__[:1] if exact else type(layer).__mro__:
        if cls.__module__.split(".")[0] in ("tf_keras", "keras"):
            return cls.__name__
    return None


def _activation_name(activation) -> str:
    name = getattr(activation, "__name__", type(activation).__name__)
    if getattr(activation, "__module__", "").startswith("keras."):
        # Keras 3's names of swish and hard swish; tfmot and this registry know them as these.
        return {"silu": "swish", "hard_silu": "hard_swish"}.get(name, name)
    return name


def op_lambda_function(layer) -> Optional[str]:
    """The TF function of a ``TFOpLambda``/``SlicingOpLambda`` (``"math.multiply"``), else None."""
    if type(layer).__name__ not in _OP_LAMBDAS:
        return None
    return layer.get_config().get("function")


def is_pass_through(layer) -> bool:
    """Whether ``layer`` only moves values (no quantizer, not even a wrapper is needed)."""
    return op_lambda_function(layer) in _TF_OP_PASS_THROUGH


def _supported_activation(activation) -> bool:
    aw = _compat.QuantizeAwareActivation
    return _activation_name(activation) in (
        aw._PRE_QUANT_ACTIVATIONS | aw._POST_QUANT_ACTIVATIONS | aw._NO_QUANTIZE_ACTIVATIONS)


class BitPruneQuantizeRegistry(_compat.QuantizeRegistry):
    """Maps built-in Keras layers to :class:`BitPruneQuantizeConfig`s.

    Args:
      weight_quantizer: template for every kernel quantizer (bit range, init,
        rate, per-channel bitlengths); the registry sets the scale granularity
        and channel axes per layer class.
      activation_quantizer: template for every activation quantizer.
    """

    def __init__(self, weight_quantizer: Optional[WeightBitQuantizer] = None,
                 activation_quantizer: Optional[ActivationBitQuantizer] = None):
        self.weight_quantizer = weight_quantizer or WeightBitQuantizer()
        self.activation_quantizer = activation_quantizer or ActivationBitQuantizer()

    def unsupported_reason(self, layer) -> Optional[str]:
        """Why ``layer`` has no built-in config, or None when it has one."""
        cls, kind = type(layer), builtin_kind(layer)
        function = op_lambda_function(layer)
        if cls.__name__ in _OP_LAMBDAS:
            if function in _TF_OP_OUTPUT or function in _TF_OP_PASS_THROUGH:
                return None
            return (f"{cls.__name__} 'tf.{function}' is not elementwise math or a reshape the "
                    f"registry knows (supported: {sorted(_TF_OP_OUTPUT | _TF_OP_PASS_THROUGH)})")
        known = (kind in _KERNEL_LAYERS or kind in _OUTPUT_LAYERS or kind in _PASS_THROUGH_LAYERS
                 or kind in PREPROCESSING_LAYERS)
        if not known and kind != "Activation":
            return f"no built-in bit-pruning config for {cls.__name__}"
        activation = getattr(layer, "activation", None)
        if kind == "Activation" and _activation_name(activation) in _OUTPUT_ACTIVATIONS:
            return None
        if activation is not None and not _supported_activation(activation):
            return (f"activation '{_activation_name(activation)}' is not supported by tfmot's "
                    f"quantize-aware activation (use relu, linear, softmax, sigmoid, tanh, swish, "
                    f"gelu; or move it into its own Activation layer, which also supports "
                    f"{', '.join(sorted(_OUTPUT_ACTIVATIONS))})")
        return None

    def supports(self, layer) -> bool:
        return self.unsupported_reason(layer) is None

    def get_quantize_config(self, layer, quantize_outputs: bool = True) -> BitPruneQuantizeConfig:
        """The config for ``layer``; ``quantize_outputs=False`` drops its
        activation/output quantizer (kernels stay quantized)."""
        reason = self.unsupported_reason(layer)
        if reason:
            raise ValueError(f"Layer '{layer.name}': {reason}.")
        kind = builtin_kind(layer)
        weights = {}
        activation_attrs = []
        quantize_output = False
        if kind in _KERNEL_LAYERS:
            kernels, per_channel_scale = _KERNEL_LAYERS[kind]
            base = self.weight_quantizer.get_config()
            renames = _KERAS3_KERNEL_ATTRS.get(kind, {}) if _compat.is_keras3(layer) else {}
            for attr, axes in kernels.items():
                # A power-of-two grid is one fixed-point type per layer: one step per tensor.
                per_channel = per_channel_scale and self.weight_quantizer.grid != "pow2"
                weights[renames.get(attr, attr)] = WeightBitQuantizer.from_config(
                    dict(base, per_channel_scale=per_channel, channel_axes=list(axes)))
            activation_attrs = ["activation"]
        elif kind == "Activation":
            if _activation_name(layer.activation) in _OUTPUT_ACTIVATIONS:
                quantize_output = True
            else:
                activation_attrs = ["activation"]
        elif (kind in _OUTPUT_LAYERS or kind in PREPROCESSING_LAYERS
              or op_lambda_function(layer) in _TF_OP_OUTPUT):
            quantize_output = True
        if not quantize_outputs:
            activation_attrs, quantize_output = [], False
        return BitPruneQuantizeConfig(list(weights), activation_attrs, quantize_output,
                                      weight_quantizer=weights,
                                      activation_quantizer=self.activation_quantizer)


def is_quantizable(layer) -> bool:
    """Whether a layer gets a wrapper at all (not an input, reshape or other pass-through)."""
    return not is_pass_through(layer) and builtin_kind(layer) not in _PASS_THROUGH_LAYERS


class BitPruneQuantizeScheme(tfmot.quantization.keras.QuantizeScheme):
    """The scheme to pass to ``tfmot.quantization.keras.quantize_apply``.

    >>> scheme = BitPruneQuantizeScheme(WeightBitQuantizer(max_bits=6))
    """

    def __init__(self, weight_quantizer: Optional[WeightBitQuantizer] = None,
                 activation_quantizer: Optional[ActivationBitQuantizer] = None,
                 quantize_inputs: bool = True):
        self._registry = BitPruneQuantizeRegistry(weight_quantizer, activation_quantizer)
        self._quantize_inputs = quantize_inputs

    def get_layout_transformer(self):
        from tf_bitpruning.layout import BitPruneLayoutTransform  # layout reads this module's registry

        return BitPruneLayoutTransform(self._registry, self._quantize_inputs)

    def get_quantize_registry(self):
        return self._registry
