"""The bit-pruning ``QuantizeScheme``: a registry (layer class -> config) and the
layout transform, plugged into tfmot's ``quantize_apply``.

Placement of quantizers (what TFLite executes, as in tfmot's 8-bit scheme):
- kernels of Dense, Conv1D/2D, Conv2DTranspose, DepthwiseConv2D and
  SeparableConv1D/2D get a :class:`WeightBitQuantizer` each (per-channel scale for
  convolutions, per-tensor for Dense);
- a layer's output activation gets an :class:`ActivationBitQuantizer`, except where
  its only consumer re-quantizes the same values right away (BatchNormalization,
  ReLU, LeakyReLU, Activation, Concatenate): there the consumer's quantizer is the
  one that counts. So ``Conv2D -> BatchNormalization -> ReLU`` quantizes the conv
  kernel and the ReLU output: **BatchNormalization is quantized after, not
  folded**. The float BN scale is folded into the per-channel conv scale at
  export, which keeps the b-bit grid exact;
- pass-through layers (Flatten, Reshape, Dropout, MaxPooling, padding, ...) are
  not quantized; the model inputs get an activation quantizer of their own.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import tf_keras as keras
import tensorflow_model_optimization as tfmot
from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer as tfmot_quantize_layer
from tensorflow_model_optimization.python.core.quantization.keras import quantize_aware_activation
from tensorflow_model_optimization.python.core.quantization.keras import quantize_layout_transform
from tensorflow_model_optimization.python.core.quantization.keras import quantize_registry
from tensorflow_model_optimization.python.core.quantization.keras import utils as quantize_utils
from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import default_8bit_transforms
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import model_transformer
from tensorflow_model_optimization.python.core.quantization.keras.graph_transformations import transforms

from tf_bitpruning.configs import BitPruneQuantizeConfig
from tf_bitpruning.quantizers import ActivationBitQuantizer, WeightBitQuantizer

L = keras.layers

# class -> (kernel attrs with their output-channel axes, per-channel scale)
_KERNEL_LAYERS: Dict[type, Tuple[Dict[str, Tuple[int, ...]], bool]] = {
    L.Dense: ({"kernel": (-1,)}, False),
    L.Conv1D: ({"kernel": (-1,)}, True),
    L.Conv2D: ({"kernel": (-1,)}, True),
    L.Conv2DTranspose: ({"kernel": (2,)}, True),
    L.DepthwiseConv2D: ({"depthwise_kernel": (2, 3)}, True),
    L.SeparableConv1D: ({"depthwise_kernel": (1, 2), "pointwise_kernel": (-1,)}, True),
    L.SeparableConv2D: ({"depthwise_kernel": (2, 3), "pointwise_kernel": (-1,)}, True),
}

_OUTPUT_LAYERS = (
    L.ReLU, L.LeakyReLU, L.BatchNormalization, L.Add, L.Subtract, L.Multiply, L.Average,
    L.Maximum, L.Minimum, L.Concatenate, L.AveragePooling1D, L.AveragePooling2D,
    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.UpSampling1D, L.UpSampling2D,
)

_PASS_THROUGH_LAYERS = (
    L.InputLayer, L.Flatten, L.Reshape, L.Permute, L.Dropout, L.SpatialDropout1D,
    L.SpatialDropout2D, L.ActivityRegularization, L.MaxPooling1D, L.MaxPooling2D,
    L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.ZeroPadding1D, L.ZeroPadding2D,
    L.Cropping1D, L.Cropping2D, L.Softmax,
)

# A producer whose only consumer is one of these skips its own output quantizer.
_REQUANTIZING_CONSUMERS = (L.BatchNormalization, L.ReLU, L.LeakyReLU, L.Activation, L.Concatenate)


def _activation_name(activation) -> str:
    return getattr(activation, "__name__", type(activation).__name__)


def _supported_activation(activation) -> bool:
    aw = quantize_aware_activation.QuantizeAwareActivation
    return _activation_name(activation) in (
        aw._PRE_QUANT_ACTIVATIONS | aw._POST_QUANT_ACTIVATIONS | aw._NO_QUANTIZE_ACTIVATIONS)


class BitPruneQuantizeRegistry(quantize_registry.QuantizeRegistry):
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
        cls = type(layer)
        known = cls in _KERNEL_LAYERS or cls in _OUTPUT_LAYERS or cls in _PASS_THROUGH_LAYERS
        if not known and cls is not L.Activation:
            return f"no built-in bit-pruning config for {cls.__name__}"
        activation = getattr(layer, "activation", None)
        if activation is not None and not _supported_activation(activation):
            return (f"activation '{_activation_name(activation)}' is not supported by tfmot's "
                    f"quantize-aware activation (use relu, linear, softmax, sigmoid, tanh, swish, gelu)")
        return None

    def supports(self, layer) -> bool:
        return self.unsupported_reason(layer) is None

    def get_quantize_config(self, layer, quantize_outputs: bool = True) -> BitPruneQuantizeConfig:
        """The config for ``layer``; ``quantize_outputs=False`` drops its
        activation/output quantizer (kernels stay quantized)."""
        reason = self.unsupported_reason(layer)
        if reason:
            raise ValueError(f"Layer '{layer.name}': {reason}.")
        cls = type(layer)
        weights = {}
        activation_attrs = []
        quantize_output = False
        if cls in _KERNEL_LAYERS:
            kernels, per_channel_scale = _KERNEL_LAYERS[cls]
            base = self.weight_quantizer.get_config()
            for attr, axes in kernels.items():
                weights[attr] = WeightBitQuantizer.from_config(
                    dict(base, per_channel_scale=per_channel_scale, channel_axes=list(axes)))
            activation_attrs = ["activation"]
        elif cls is L.Activation:
            activation_attrs = ["activation"]
        elif cls in _OUTPUT_LAYERS:
            quantize_output = True
        if not quantize_outputs:
            activation_attrs, quantize_output = [], False
        return BitPruneQuantizeConfig(list(weights), activation_attrs, quantize_output,
                                      weight_quantizer=weights,
                                      activation_quantizer=self.activation_quantizer)


class _InputLayerQuantize(default_8bit_transforms.InputLayerQuantize):
    """InputLayer => InputLayer -> QuantizeLayer(ActivationBitQuantizer)."""

    def __init__(self, quantizer: ActivationBitQuantizer):
        super().__init__()
        self._quantizer = quantizer

    def replacement(self, match_layer):
        quant_layer = tfmot_quantize_layer.QuantizeLayer(self._quantizer)
        layer_config = quantize_utils.serialize_layer(quant_layer, use_legacy_format=True)
        layer_config["name"] = quant_layer.name
        return transforms.LayerNode(layer_config, input_layers=[match_layer])

    def custom_objects(self):
        return {"QuantizeLayer": tfmot_quantize_layer.QuantizeLayer,
                "ActivationBitQuantizer": ActivationBitQuantizer}


class BitPruneLayoutTransform(quantize_layout_transform.QuantizeLayoutTransform):
    """Adds the input quantizers and drops output quantizers that a consumer
    re-quantizes right away (see the module docstring)."""

    def __init__(self, registry: BitPruneQuantizeRegistry, quantize_inputs: bool = True):
        self._registry = registry
        self._quantize_inputs = quantize_inputs

    def apply(self, model, layer_quantize_map):
        steps = [_InputLayerQuantize(self._registry.activation_quantizer)] if self._quantize_inputs else []
        model, layer_quantize_map = model_transformer.ModelTransformer(
            model, steps, set(layer_quantize_map), layer_quantize_map).transform()
        for layer in model.layers:
            entry = layer_quantize_map.get(layer.name)
            if entry is None or entry.get("quantize_config") is not None:
                continue  # not annotated, or the user chose the config
            consumers = [node.outbound_layer for node in layer._outbound_nodes]
            if (len(consumers) == 1 and isinstance(consumers[0], _REQUANTIZING_CONSUMERS)
                    and consumers[0].name in layer_quantize_map and self._registry.supports(layer)):
                entry["quantize_config"] = self._registry.get_quantize_config(layer, quantize_outputs=False)
        return model, layer_quantize_map


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
        return BitPruneLayoutTransform(self._registry, self._quantize_inputs)

    def get_quantize_registry(self):
        return self._registry
