"""The registry: which :class:`BitPruneQuantizeConfig` each built-in Keras layer gets.

Its decisions read the layer tables of :mod:`tf_bitpruning.layer_kinds`; where the
quantizers go, and why, is described in :mod:`tf_bitpruning.scheme`.
"""

from __future__ import annotations

from typing import Optional

from tf_bitpruning import _compat, frontend
from tf_bitpruning.configs import BitPruneQuantizeConfig
from tf_bitpruning.layer_kinds import (FLOAT_ONLY_LAYERS, KERNEL_LAYERS, OP_LAMBDAS, OUTPUT_ACTIVATIONS, OUTPUT_LAYERS,
                                       PASS_THROUGH_LAYERS, PREPROCESSING_LAYERS, RECURRENT_LAYERS, TABLE_LAYERS,
                                       TF_OP_OUTPUT, TF_OP_PASS_THROUGH, TRAINING_ONLY, UNWRAPPED, activation_name,
                                       builtin_kind, op_lambda_function)
from tf_bitpruning.quantizers import ActivationBitQuantizer, WeightBitQuantizer


def is_pass_through(layer) -> bool:
    """Whether ``layer`` needs no wrapper: it only moves values (a reshaping ``TFOpLambda``),
    or it must stay unwrapped to work (``layer_kinds.UNWRAPPED``)."""
    return op_lambda_function(layer) in TF_OP_PASS_THROUGH or builtin_kind(layer) in UNWRAPPED


def is_quantizable(layer) -> bool:
    """Whether a layer gets a wrapper at all (not an input, reshape or other pass-through)."""
    return not is_pass_through(layer) and builtin_kind(layer) not in PASS_THROUGH_LAYERS


def _supported_activation(activation) -> bool:
    return activation_name(activation) in _compat.TFMOT_ACTIVATIONS


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
        if cls.__name__ in OP_LAMBDAS:
            if function in TF_OP_OUTPUT or function in TF_OP_PASS_THROUGH:
                return None
            return (f"{cls.__name__} 'tf.{function}' is not elementwise math or a reshape the "
                    f"registry knows (supported: {sorted(TF_OP_OUTPUT | TF_OP_PASS_THROUGH)})")
        known = (kind in KERNEL_LAYERS or kind in OUTPUT_LAYERS or kind in PASS_THROUGH_LAYERS
                 or kind in PREPROCESSING_LAYERS)
        if kind in FLOAT_ONLY_LAYERS:
            return FLOAT_ONLY_LAYERS[kind]
        if not known and kind != "Activation":
            return f"no built-in bit-pruning config for {cls.__name__}"
        activation = getattr(layer, "activation", None)
        if kind == "Activation" and activation_name(activation) in OUTPUT_ACTIVATIONS:
            return None
        if kind in TRAINING_ONLY:
            return None
        if activation is not None and not _supported_activation(activation):
            return (f"activation '{activation_name(activation)}' is not supported by tfmot's "
                    f"quantize-aware activation (use relu, linear, softmax, sigmoid, tanh, swish, "
                    f"gelu; or move it into its own Activation layer, which also supports "
                    f"{', '.join(sorted(OUTPUT_ACTIVATIONS))})")
        return None

    def supports(self, layer) -> bool:
        """Whether tfmot may wrap ``layer`` (``UNWRAPPED`` kinds are accepted but stay unwrapped)."""
        return not (builtin_kind(layer) in UNWRAPPED or self.unsupported_reason(layer))

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
        if kind in KERNEL_LAYERS:
            kernels, per_channel_scale = KERNEL_LAYERS[kind]
            base = self.weight_quantizer.get_config()
            renames = frontend.frontend_for(layer).kernel_renames(kind)
            for attr, axes in kernels.items():
                # A power-of-two grid is one fixed-point type per layer: one step per tensor.
                per_channel = per_channel_scale and self.weight_quantizer.grid != "pow2"
                config = dict(base, per_channel_scale=per_channel, channel_axes=list(axes))
                if kind in TABLE_LAYERS:
                    config["per_channel_bits"] = False  # one grid per table (TFLite's GATHER)
                weights[renames.get(attr, attr)] = WeightBitQuantizer.from_config(config)
            activation_attrs = [] if kind in TABLE_LAYERS | RECURRENT_LAYERS else ["activation"]
            # A recurrent layer's activations are its cell's (calibrated on export); its output is quantized.
            quantize_output = kind in RECURRENT_LAYERS
        elif kind == "Activation":
            if activation_name(layer.activation) in OUTPUT_ACTIVATIONS:
                quantize_output = True
            else:
                activation_attrs = ["activation"]
        elif (kind in OUTPUT_LAYERS or kind in PREPROCESSING_LAYERS
              or op_lambda_function(layer) in TF_OP_OUTPUT):
            quantize_output = True
        if not quantize_outputs:
            activation_attrs, quantize_output = [], False
        return BitPruneQuantizeConfig(list(weights), activation_attrs, quantize_output,
                                      weight_quantizer=weights,
                                      activation_quantizer=self.activation_quantizer)
