"""tfmot ``QuantizeConfig`` for bit-pruned layers.

One config class serves every layer family: it names the layer's kernels (each
with its own :class:`WeightBitQuantizer`), the activation attributes to quantize
and whether the layer's output is quantized. The registry in ``registry.py`` maps
Keras layer classes to instances of it; users pass one to
``bitprune_annotate_layer`` for their own layers.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Union

import tensorflow_model_optimization as tfmot

from tf_bitpruning import activations
from tf_bitpruning.layer_kinds import builtin_kind
from tf_bitpruning.quantizers import ActivationBitQuantizer, WeightBitQuantizer

QuantizeConfig = tfmot.quantization.keras.QuantizeConfig


def weight_owner(layer, attr: str):
    """The object that holds ``layer``'s kernel ``attr``: the layer, or its cell (an LSTM's
    ``kernel`` and ``recurrent_kernel`` are its cell's)."""
    return layer if hasattr(layer, attr) else getattr(layer, "cell", layer)


class BitPruneQuantizeConfig(QuantizeConfig):
    """Quantizes a layer's kernels and activations with learned bitlengths.

    Args:
      weight_attrs: names of the layer's kernel attributes, e.g. ``["kernel"]``.
      activation_attrs: names of activation attributes, e.g. ``["activation"]``.
        The activation is quantized after ``relu``/``linear`` and before
        ``softmax``/``sigmoid``/``tanh``, as in tfmot; a swish inside a layer
        before and after. Sigmoid and swish run as TFLite computes them (the
        sigmoid on its 1/256 grid, :mod:`tf_bitpruning.activations`).
      quantize_output: quantize the layer's output tensor (for layers without an
        activation attribute, such as ``Add`` or ``BatchNormalization``).
      weight_quantizer: a :class:`WeightBitQuantizer` for every kernel, or a dict
        ``{attr: quantizer}``; default ``WeightBitQuantizer()``.
      activation_quantizer: an :class:`ActivationBitQuantizer`; default
        ``ActivationBitQuantizer()``.

    Example, a custom layer with a ``kernel`` and an ``activation``:

    >>> config = BitPruneQuantizeConfig(["kernel"], ["activation"])
    """

    def __init__(self, weight_attrs: Sequence[str] = (), activation_attrs: Sequence[str] = (),
                 quantize_output: bool = False,
                 weight_quantizer: Union[None, WeightBitQuantizer, Dict[str, WeightBitQuantizer]] = None,
                 activation_quantizer: Optional[ActivationBitQuantizer] = None):
        self.weight_attrs = list(weight_attrs)
        self.activation_attrs = list(activation_attrs)
        self.quantize_output = bool(quantize_output)
        if not isinstance(weight_quantizer, dict):
            weight_quantizer = {a: weight_quantizer or WeightBitQuantizer() for a in self.weight_attrs}
        missing = [a for a in self.weight_attrs if a not in weight_quantizer]
        if missing:
            raise ValueError(f"BitPruneQuantizeConfig: no weight quantizer for {missing}.")
        self.weight_quantizers = {a: weight_quantizer[a] for a in self.weight_attrs}
        self.activation_quantizer = activation_quantizer or ActivationBitQuantizer()

    def _attr(self, layer, attr):
        owner = weight_owner(layer, attr)
        if not hasattr(owner, attr):
            raise AttributeError(
                f"Layer '{layer.name}' ({type(layer).__name__}) has no attribute '{attr}' "
                f"named in its BitPruneQuantizeConfig.")
        return getattr(owner, attr)

    def get_weights_and_quantizers(self, layer):
        return [(self._attr(layer, a), self.weight_quantizers[a]) for a in self.weight_attrs]

    def get_activations_and_quantizers(self, layer):
        inside = builtin_kind(layer, exact=False) != "Activation"
        return [(activations.quantize_aware(self._attr(layer, a), inside), self.activation_quantizer)
                for a in self.activation_attrs]

    def set_quantize_weights(self, layer, quantize_weights):
        if len(quantize_weights) != len(self.weight_attrs):
            raise ValueError(
                f"Layer '{layer.name}': expected {len(self.weight_attrs)} quantized weights, "
                f"got {len(quantize_weights)}.")
        for attr, weight in zip(self.weight_attrs, quantize_weights):
            setattr(weight_owner(layer, attr), attr, weight)

    def set_quantize_activations(self, layer, quantize_activations):
        if len(quantize_activations) != len(self.activation_attrs):
            raise ValueError(
                f"Layer '{layer.name}': expected {len(self.activation_attrs)} quantized "
                f"activations, got {len(quantize_activations)}.")
        for attr, activation in zip(self.activation_attrs, quantize_activations):
            setattr(layer, attr, activation)

    def get_output_quantizers(self, layer):
        return [self.activation_quantizer] if self.quantize_output else []

    def quantizers(self):
        """Every quantizer of this config (weights first)."""
        return list(self.weight_quantizers.values()) + [self.activation_quantizer]

    def replace(self, **changes) -> "BitPruneQuantizeConfig":
        """A copy with some constructor arguments changed."""
        args = dict(weight_attrs=self.weight_attrs, activation_attrs=self.activation_attrs,
                    quantize_output=self.quantize_output, weight_quantizer=dict(self.weight_quantizers),
                    activation_quantizer=self.activation_quantizer)
        args.update(changes)
        return BitPruneQuantizeConfig(**args)

    def get_config(self):
        return {
            "weight_attrs": self.weight_attrs,
            "activation_attrs": self.activation_attrs,
            "quantize_output": self.quantize_output,
            "weight_quantizer": {a: q.get_config() for a, q in self.weight_quantizers.items()},
            "activation_quantizer": self.activation_quantizer.get_config(),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["weight_quantizer"] = {
            a: WeightBitQuantizer.from_config(c) for a, c in config.get("weight_quantizer", {}).items()}
        config["activation_quantizer"] = ActivationBitQuantizer.from_config(config["activation_quantizer"])
        return cls(**config)

    def __eq__(self, other):
        return isinstance(other, BitPruneQuantizeConfig) and self.get_config() == other.get_config()

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return id(self)
