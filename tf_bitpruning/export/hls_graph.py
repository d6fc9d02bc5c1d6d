"""The float Keras 3 model hls4ml converts, and the fixed-point type of every tensor.

Walks a frozen tf_keras bit-pruned model (a Keras 3 one through its twin) layer by
layer and builds a plain Keras 3 model: kernels replaced by their quantized values,
a linear ``Conv/Dense -> BatchNormalization`` pair folded into one layer (as on the
TFLite path, :func:`.layer_rules.bn_factors`; any other BN is hls4ml's own, inexact),
activations as ``Activation`` layers of their own, quantizer layers removed. Each
quantizer becomes the ``result`` type of the layer whose output it quantizes (its
``fixed<b, I>`` grid, round half to even, saturate); a tensor without a quantizer gets
the exact type of what computes it (sums of products of grid values), so hls4ml
rounds exactly where Keras does.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Tuple

import keras
import numpy as np

from tf_bitpruning import costs, frontend
from tf_bitpruning.attention import expanded_from
from tf_bitpruning.export import _compat, hls_layers
from tf_bitpruning.export.checks import ExportError
from tf_bitpruning.export.fixed import FixedType
from tf_bitpruning.export.hls_layers import (AVERAGE, EXACT_ACTIVATIONS, KERNEL_LAYERS, SAME_TYPE, SUPPORTED,
                                             TABLE_ACTIVATIONS, activation_type, keras3_layer)
from tf_bitpruning.layer_kinds import builtin_kind


@dataclasses.dataclass
class HlsGraph:
    """What :func:`build` found: the float model and the types hls4ml must use."""

    model: keras.Model
    precision: Dict[str, Dict[str, FixedType]]   # hls4ml layer name -> {"result": ..., "weight": ...}
    inexact: Dict[str, str]                       # hls4ml layer name -> why it is not bit-exact
    bits: Dict[str, Dict[str, int]]               # hls4ml layer name -> learned {"weight": b, "result": b}
    biases: Dict[str, Tuple[np.ndarray, int]]     # unfolded kernel layer -> (its bias, the accumulator's F)


class GraphBuilder:
    """One pass over the frozen tf_keras model (see module doc): the tensors built so far
    and the types found; :mod:`.hls_layers` handles each layer kind."""

    def __init__(self, model, fold_fraction_bits: int):
        self.model = model
        self.fold_bits = int(fold_fraction_bits)
        self.out: Dict[str, Tuple[Any, Optional[FixedType]]] = {}
        self.precision: Dict[str, Dict[str, FixedType]] = {}
        self.inexact: Dict[str, str] = {}
        self.bits: Dict[str, Dict[str, int]] = {}
        self.biases: Dict[str, Tuple[np.ndarray, int]] = {}
        self.folded: Dict[str, str] = {}  # BN wrapper name -> the kernel wrapper it folds into
        self.inputs: List[Any] = []

    # -- helpers ----------------------------------------------------------------------------------
    def source(self, layer) -> Tuple[Any, FixedType]:
        producers = frontend.producers(layer)
        if len(producers) != 1:
            raise ExportError(f"layer '{layer.name}' takes {len(producers)} inputs; one expected.")
        return self.typed(producers[0], layer)

    def typed(self, producer, layer) -> Tuple[Any, FixedType]:
        if producer.name not in self.out:
            raise ExportError(f"layer '{layer.name}': its input '{producer.name}' was not exported first.")
        tensor, t = self.out[producer.name]
        if t is None:
            raise ExportError(f"layer '{layer.name}' reads the model input '{producer.name}' unquantized "
                              f"(quantize_inputs=False): hls4ml needs a fixed-point input type. Bit-prune "
                              f"with quantize_inputs=True.")
        return tensor, t

    def activation(self, x, act: str, name: str, t_in: FixedType, quantized: Optional[FixedType]):
        """An ``Activation`` layer named ``name`` after ``x``; returns ``(tensor, type)``."""
        if act not in EXACT_ACTIVATIONS and act not in TABLE_ACTIVATIONS:
            raise ExportError(f"layer '{name}': activation '{act}' is not supported by export_hls4ml "
                              f"(supported: {list(EXACT_ACTIVATIONS) + sorted(TABLE_ACTIVATIONS)}).")
        if act in TABLE_ACTIVATIONS:
            self.inexact[name] = (f"{act} runs on hls4ml's lookup tables, not as Keras' float "
                                  f"{act}: its outputs are close, not equal")
            result = quantized or TABLE_ACTIVATIONS[act]
        else:
            result = quantized or t_in.exact()
        self.precision[name] = {"result": result}
        if act == "softmax":
            # hls4ml's "stable" softmax indexes its tables with x_max - x (in [0, 2^I)), then 1/Σ exp:
            # types that hold those (its defaults drop the sign bit of a signed input and overflow).
            total = math.ceil(math.log2(int(x.shape[-1]) + 1))  # Σ exp(x - x_max) in [1, n]
            self.precision[name].update(
                inp_norm=FixedType(False, t_in.integer, max(16 - t_in.integer, t_in.fraction)),
                exp_table=FixedType(False, 1, 17, "RND", "SAT"), inv_table=FixedType(False, 1, 17, "RND", "SAT"),
                accum=FixedType(False, total, 18 - total, "RND", "SAT"),
                inv_inp=FixedType(False, total, 18 - total, "RND", "SAT"))
        return keras.layers.Activation(act, name=name)(x), result

    def quantizer_bits(self, name: str, quantizer, variables) -> Optional[FixedType]:
        if variables is None:
            return None
        t, b = activation_type(quantizer, variables, name)
        self.bits.setdefault(name, {})["result"] = b
        return t

    def float_check(self, name: str, acc: FixedType) -> None:
        if acc.width > 24 and name not in self.inexact:
            self.inexact[name] = (f"the exact accumulator needs {acc.width} bits; Keras sums in float32 "
                                  f"(24-bit mantissa) and can round where hls4ml does not")

    # -- layers -------------------------------------------------------------------------------------
    def visit(self, layer) -> None:
        kind = builtin_kind(_compat.inner(layer), exact=False)
        if kind == "InputLayer":
            return  # made by build() from the model's inputs
        if costs.is_input_quantizer(layer):
            src = frontend.producer(layer)
            if src is None or builtin_kind(src) != "InputLayer":
                raise ExportError(f"input quantizer '{layer.name}' does not follow a model input (float "
                                  f"preprocessing before it): hls4ml would run that preprocessing in fixed point.")
            t, b = activation_type(layer.quantizer, layer.quantizer_vars, layer.name)
            self.precision[src.name] = {"result": t}
            self.bits[src.name] = {"result": b}
            self.out[layer.name] = (self.out[src.name][0], t)
        elif kind in KERNEL_LAYERS:
            hls_layers.kernel(self, layer, kind)
        elif kind == "BatchNormalization":
            if layer.name in self.folded:
                self.out[layer.name] = self.out[self.folded[layer.name]]
            else:
                hls_layers.batchnorm(self, layer)
        elif kind == "Dropout":
            self.out[layer.name] = self.source(layer)
        elif kind in ("ReLU", "Activation"):
            hls_layers.activation_layer(self, layer, kind)
        elif kind in SAME_TYPE:
            x, t = self.source(layer)
            inner = _compat.inner(layer)
            y = keras3_layer(kind, inner.get_config(), inner.name)(x)
            self.precision[inner.name] = {"result": t.exact()} if kind.startswith(("Flatten", "Reshape")) else \
                {"result": t.exact(), "accum": t.exact()}
            self.out[layer.name] = (y, t.exact())
        elif kind in AVERAGE:
            hls_layers.average(self, layer, kind)
        elif kind in ("Add", "Concatenate"):
            hls_layers.merge(self, layer, kind)
        else:
            inner = _compat.inner(layer)
            attention = expanded_from(inner.name)
            origin = (f", a piece of the MultiHeadAttention '{attention}' that bitprune_model expanded"
                      if attention else "")
            advice = " Attention models export with export_tflite." if attention else ""
            raise ExportError(f"layer '{inner.name}' ({type(inner).__name__}{origin}) is not supported by "
                              f"export_hls4ml (supported: {', '.join(SUPPORTED)}).{advice}")

    def output_grid(self, layer, name: Optional[str] = None) -> Optional[FixedType]:
        """The type of ``layer``'s output quantizer (bits recorded under ``name``), or None."""
        q, v = _compat.output_quantizer(layer) if isinstance(layer, _compat.QuantizeWrapper) else (None, None)
        return self.quantizer_bits(name or _compat.inner(layer).name, q, v)


def build(model, fold_fraction_bits: int = 8) -> HlsGraph:
    """The :class:`HlsGraph` of a frozen tf_keras bit-pruned ``model`` on pow2 grids."""
    builder = GraphBuilder(model, fold_fraction_bits)
    for tensor, layer in zip(model.inputs, _compat.input_layers(model)):
        x = keras.Input(tuple(tensor.shape[1:]), name=layer.name)
        builder.inputs.append(x)
        builder.out[layer.name] = (x, None)
    for layer in model.layers:
        builder.visit(layer)
    outputs = [builder.out[layer.name][0] for layer in _compat.output_layers(model)]
    float_model = keras.Model(builder.inputs[0] if len(builder.inputs) == 1 else builder.inputs,
                              outputs[0] if len(outputs) == 1 else outputs, name=f"{model.name}_hls4ml")
    return HlsGraph(float_model, builder.precision, builder.inexact, builder.bits, builder.biases)
