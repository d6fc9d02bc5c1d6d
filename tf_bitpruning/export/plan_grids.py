"""Which learned grid a tensor of the frozen model is on: the first, frozen stage of
the export plan (:mod:`.plan`), from which the plan's tables are built."""

from __future__ import annotations

import dataclasses
from typing import Dict, FrozenSet, Mapping, Optional

import numpy as np
import tf_keras as keras

from tf_bitpruning import costs
from tf_bitpruning.export import _compat
from tf_bitpruning.export.grids import ActivationExport, activation_export
from tf_bitpruning.export.layer_rules import AVERAGES, VALUE_PRESERVING, bitpruned
from tf_bitpruning.quantizers import BitlengthQuantizer

L = keras.layers


@dataclasses.dataclass(frozen=True, eq=False)
class Grids:
    """The grid of every activation quantizer of ours, and the BatchNormalization
    layers folded into their producer's kernel (their output is not in the file)."""

    activations: Mapping[int, ActivationExport]  # id(bits variable) -> export
    folded_bn: FrozenSet[str]                    # BN wrapper layer names

    def act(self, variables) -> Optional[ActivationExport]:
        """The grid of the activation quantizer with these variables (None: not ours)."""
        return self.activations.get(id(variables["bits"])) if variables else None

    def output_grid(self, producer, stored: bool = False) -> Optional[ActivationExport]:
        """The b-bit grid ``producer``'s output is on (through value-preserving layers), if any;
        ``stored``: also a folded BN's own output grid (the kernel writes it in the file)."""
        while isinstance(_compat.inner(producer), VALUE_PRESERVING) \
                and not isinstance(producer, _compat.QuantizeLayer):
            producers = _compat.producers(producer)
            if len(producers) != 1:
                return None
            producer = producers[0]
        if isinstance(producer, _compat.QuantizeLayer):
            return self.act(producer.quantizer_vars) if producer.quantizer is not None else None
        if not isinstance(producer, _compat.QuantizeWrapper) or (producer.name in self.folded_bn
                                                                 and not stored):
            return None
        quantizer, variables = _compat.output_quantizer(producer)
        if quantizer is not None:
            return self.act(variables)
        activations = _compat.quantize_activations(producer)
        if activations:
            _, post = _compat.activation_vars(activations[-1])
            if post is not None:
                return self.act(post)
        return None

    def layer_input_grid(self, layer) -> Optional[ActivationExport]:
        """The b-bit grid of ``layer``'s input, if its producer's output is on one."""
        producers = _compat.producers(layer)
        return self.output_grid(producers[0]) if len(producers) == 1 else None

    def relu_grid(self, layer) -> Optional[ActivationExport]:
        """The output grid of a bit-pruned plain relu layer (``Activation("relu")``, a
        ``ReLU()`` without options) called once, else None."""
        inner = _compat.inner(layer)
        if not bitpruned(layer) or _compat.calls(layer) != 1:
            return None
        if isinstance(inner, L.Activation):
            if getattr(_compat.plain_activation(inner.activation), "__name__", "") != "relu":
                return None
            activations = _compat.quantize_activations(layer)
            pre, post = _compat.activation_vars(activations[0]) if activations else (None, None)
            return self.act(post) if pre is None else None
        if isinstance(inner, L.ReLU) and inner.max_value is None and not inner.negative_slope \
                and not inner.threshold:
            _, variables = _compat.output_quantizer(layer)
            return self.act(variables)
        return None

    def concat_target_grid(self, layer, users) -> Optional[ActivationExport]:
        """The grid of ``layer``'s output quantizer, or of the concatenations it feeds alone."""
        while bitpruned(layer):
            quantizer, variables = _compat.output_quantizer(layer)
            if quantizer is not None:
                return self.act(variables)
            after = users.get(id(layer), [])
            if len(after) != 1 or not isinstance(_compat.inner(after[0]), L.Concatenate):
                return None
            layer = after[0]
        return None

    def average_lower_bound(self, layer) -> Optional[float]:
        """A lower bound of an average's output (its input grid's min), or None.

        Only where the average really reduces: over one element TFLite drops the
        MEAN, and a fake quant right after another would be merged into it."""
        inner = _compat.inner(layer)
        if not isinstance(inner, AVERAGES):
            return None
        shape = layer.get_input_shape_at(0)
        spatial = shape[1:-1] if getattr(inner, "data_format", "channels_last") == "channels_last" else shape[2:]
        if any(d is None for d in spatial) or int(np.prod(spatial)) <= 1:
            return None
        grid = self.layer_input_grid(layer)
        return None if grid is None else grid.lo


def layer_activations(layer) -> Dict[int, ActivationExport]:
    """The grids of a layer's activation quantizers of ours, by ``id`` of their bits variable."""
    if isinstance(layer, _compat.QuantizeLayer):
        pairs = [(layer.quantizer, layer.quantizer_vars)]
    elif bitpruned(layer):  # tfmot's own fake quants export as they are
        pairs = costs.activation_tensors(layer)
    else:
        pairs = []
    return {id(variables["bits"]): activation_export(quantizer, variables, layer.name)
            for quantizer, variables in pairs if isinstance(quantizer, BitlengthQuantizer)}
