"""The float Keras 3 model hls4ml converts, and the fixed-point type of every tensor.

Walks a frozen tf_keras bit-pruned model (a Keras 3 one through its twin) layer by
layer and builds a plain Keras 3 model: kernels replaced by their quantized values,
a ``Conv/Dense -> BatchNormalization`` pair folded into one layer (as on the TFLite
path, :func:`.layer_rules.bn_factors`), activations as ``Activation`` layers of their own,
quantizer layers removed. Each quantizer becomes the ``result`` type of the layer
whose output it quantizes (its ``fixed<b, I>`` grid, round half to even, saturate); a
tensor without a quantizer gets the exact type of what computes it (sums of products
of grid values), so hls4ml rounds exactly where Keras does.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Tuple

import keras
import numpy as np

from tf_bitpruning import frontend
from tf_bitpruning import costs, quant_ops
from tf_bitpruning.export import _compat
from tf_bitpruning.export.checks import ExportError
from tf_bitpruning.export.fixed import FixedType, covering, grid_type, of_values, union
from tf_bitpruning.export.grids import int_bits
from tf_bitpruning.export.layer_rules import bn_factors
from tf_bitpruning.layer_kinds import activation_name, builtin_kind

KERNEL_LAYERS = ("Dense", "Conv1D", "Conv2D", "DepthwiseConv2D")
_SAME_TYPE = ("Flatten", "Reshape", "MaxPooling1D", "MaxPooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D")
_AVERAGE = ("AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D")
_EXACT_ACTIVATIONS = ("linear", "relu")
# Activations hls4ml computes from lookup tables (inexact), and their output types.
_TABLE_ACTIVATIONS = {"softmax": FixedType(False, 1, 15, "RND", "SAT"),
                      "sigmoid": FixedType(False, 1, 15, "RND", "SAT"),
                      "tanh": FixedType(True, 2, 14, "RND", "SAT")}
SUPPORTED = KERNEL_LAYERS + ("BatchNormalization (folded)", "ReLU", "Activation", "Add", "Concatenate",
                             "Dropout") + _SAME_TYPE + _AVERAGE
# Config keys a Keras 3 twin of each layer takes from the tf_keras config.
_KEYS = {"Dense": ("units",), "Conv1D": ("filters", "kernel_size", "strides", "padding", "dilation_rate", "groups"),
         "Conv2D": ("filters", "kernel_size", "strides", "padding", "dilation_rate", "groups"),
         "DepthwiseConv2D": ("kernel_size", "strides", "padding", "depth_multiplier", "dilation_rate"),
         "MaxPooling1D": ("pool_size", "strides", "padding"), "MaxPooling2D": ("pool_size", "strides", "padding"),
         "AveragePooling1D": ("pool_size", "strides", "padding"),
         "AveragePooling2D": ("pool_size", "strides", "padding"),
         "Reshape": ("target_shape",), "Concatenate": ("axis",)}


@dataclasses.dataclass
class HlsGraph:
    """What :func:`build` found: the float model and the types hls4ml must use."""

    model: keras.Model
    precision: Dict[str, Dict[str, FixedType]]   # hls4ml layer name -> {"result": ..., "weight": ...}
    inexact: Dict[str, str]                       # hls4ml layer name -> why it is not bit-exact
    bits: Dict[str, Dict[str, int]]               # hls4ml layer name -> learned {"weight": b, "result": b}
    biases: Dict[str, Tuple[np.ndarray, int]]     # unfolded kernel layer -> (its bias, the accumulator's F)


def _grid(quantizer, variables, where: str) -> Tuple[FixedType, int]:
    """The fixed-point type of a frozen ``grid="pow2"`` activation quantizer, and its bits."""
    bits = int_bits(quantizer, variables)
    if bits.size != 1:
        raise ExportError(f"{where}: per-channel activation bitlengths cannot be exported to hls4ml.")
    b = int(bits.reshape(()))
    rmin, rmax = (float(np.asarray(variables[k])) for k in ("min", "max"))
    if not rmax > rmin:
        raise ExportError(f"{where}: the activation range is empty (min={rmin}, max={rmax}): train or "
                          f"fine-tune the model before exporting.")
    _, step, zero_point = quant_ops.activation_grid(np.float32(rmin), np.float32(rmax), float(b), "pow2")
    return grid_type(b, float(step), float(zero_point) > 0), b


def _weight_type(quantizer, variables, kernel: np.ndarray) -> Tuple[FixedType, int]:
    """``fixed<b, I>`` of a frozen pow2 kernel (the widest channel's ``b``), exact for ``kernel``."""
    b = int(int_bits(quantizer, variables).max())
    nonzero = np.abs(kernel[kernel != 0])
    if nonzero.size:
        levels = 2.0 ** (b - 1) - 1
        step = 2.0 ** math.ceil(math.log2(float(nonzero.max()) / levels))
        t = grid_type(b, step, True)
        if t.holds(kernel):
            return t.exact(), b
    return of_values(kernel), b


def _keras3_layer(kind: str, config: Dict[str, Any], name: str, **extra) -> keras.layers.Layer:
    if config.get("data_format", "channels_last") != "channels_last":
        raise ExportError(f"layer '{name}': data_format={config['data_format']!r}; hls4ml's io_parallel "
                          f"export here takes channels_last only.")
    args = {k: config[k] for k in _KEYS.get(kind, ()) if k in config}
    return getattr(keras.layers, kind)(name=name, **args, **extra)


class _Builder:
    """One pass over the frozen tf_keras model (see module doc)."""

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
    def _source(self, layer) -> Tuple[Any, FixedType]:
        producers = frontend.producers(layer)
        if len(producers) != 1:
            raise ExportError(f"layer '{layer.name}' takes {len(producers)} inputs; one expected.")
        return self._typed(producers[0], layer)

    def _typed(self, producer, layer) -> Tuple[Any, FixedType]:
        if producer.name not in self.out:
            raise ExportError(f"layer '{layer.name}': its input '{producer.name}' was not exported first.")
        tensor, t = self.out[producer.name]
        if t is None:
            raise ExportError(f"layer '{layer.name}' reads the model input '{producer.name}' unquantized "
                              f"(quantize_inputs=False): hls4ml needs a fixed-point input type. Bit-prune "
                              f"with quantize_inputs=True.")
        return tensor, t

    def _activation(self, x, act: str, name: str, t_in: FixedType, quantized: Optional[FixedType]):
        """An ``Activation`` layer named ``name`` after ``x``; returns ``(tensor, type)``."""
        if act not in _EXACT_ACTIVATIONS and act not in _TABLE_ACTIVATIONS:
            raise ExportError(f"layer '{name}': activation '{act}' is not supported by export_hls4ml "
                              f"(supported: {list(_EXACT_ACTIVATIONS) + sorted(_TABLE_ACTIVATIONS)}).")
        if act in _TABLE_ACTIVATIONS:
            self.inexact[name] = (f"{act} runs on hls4ml's lookup tables, not as Keras' float "
                                  f"{act}: its outputs are close, not equal")
            result = quantized or _TABLE_ACTIVATIONS[act]
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

    def _quantizer_bits(self, name: str, quantizer, variables) -> Optional[FixedType]:
        if variables is None:
            return None
        t, b = _grid(quantizer, variables, name)
        self.bits.setdefault(name, {})["result"] = b
        return t

    def _float_check(self, name: str, acc: FixedType) -> None:
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
            t, b = _grid(layer.quantizer, layer.quantizer_vars, layer.name)
            self.precision[src.name] = {"result": t}
            self.bits[src.name] = {"result": b}
            self.out[layer.name] = (self.out[src.name][0], t)
        elif kind in KERNEL_LAYERS:
            self._kernel(layer, kind)
        elif kind == "BatchNormalization":
            if layer.name not in self.folded:
                raise ExportError(f"BatchNormalization '{layer.name}' does not follow a Dense/Conv layer whose "
                                  f"only consumer it is, so it cannot be folded; export_hls4ml folds every BN.")
            self.out[layer.name] = self.out[self.folded[layer.name]]
        elif kind == "Dropout":
            self.out[layer.name] = self._source(layer)
        elif kind in ("ReLU", "Activation"):
            self._activation_layer(layer, kind)
        elif kind in _SAME_TYPE:
            x, t = self._source(layer)
            inner = _compat.inner(layer)
            y = _keras3_layer(kind, inner.get_config(), inner.name)(x)
            self.precision[inner.name] = {"result": t.exact()} if kind.startswith(("Flatten", "Reshape")) else \
                {"result": t.exact(), "accum": t.exact()}
            self.out[layer.name] = (y, t.exact())
        elif kind in _AVERAGE:
            self._average(layer, kind)
        elif kind in ("Add", "Concatenate"):
            self._merge(layer, kind)
        else:
            raise ExportError(f"layer '{_compat.inner(layer).name}' ({type(_compat.inner(layer)).__name__}) is not "
                              f"supported by "
                              f"export_hls4ml (supported: {', '.join(SUPPORTED)}).")

    def _output_grid(self, layer, name: Optional[str] = None) -> Optional[FixedType]:
        """The type of ``layer``'s output quantizer (bits recorded under ``name``), or None."""
        q, v = _compat.output_quantizer(layer) if isinstance(layer, _compat.QuantizeWrapper) else (None, None)
        return self._quantizer_bits(name or _compat.inner(layer).name, q, v)

    def _kernel(self, layer, kind: str) -> None:
        inner = _compat.inner(layer)
        name = inner.name
        x, t_in = self._source(layer)
        (weight, quantizer, variables, _), = _compat.weight_quantizers(layer)
        if quantizer.grid != "pow2":
            raise ExportError(f"layer '{name}': its kernel is on the '{quantizer.grid}' grid; hls4ml's fixed-point "
                              f"types hold power-of-two grids only: bit-prune with grid='pow2'.")
        kernel = np.asarray(quantizer(weight, False, variables), np.float64)
        w_type, w_bits = _weight_type(quantizer, variables, kernel)
        self.bits[name] = {"weight": w_bits}
        bias = np.asarray(inner.bias, np.float64) if getattr(inner, "use_bias", False) else \
            np.zeros(kernel.shape[-1] * (kernel.shape[-2] if kind == "DepthwiseConv2D" else 1))
        users = frontend.consumers(layer)
        bn = users[0] if len(users) == 1 and builtin_kind(_compat.inner(users[0]), exact=False) == \
            "BatchNormalization" else None
        if bn is not None:
            m, c = bn_factors(_compat.inner(bn), kernel.ndim if kind != "Dense" else 2)
            m_k = m.reshape(kernel.shape[-2:]) if kind == "DepthwiseConv2D" else m
            kernel = kernel * m_k
            bias = bias * m + c
            w_type = FixedType(True, 0, w_type.fraction + self.fold_bits)
            kernel = np.round(kernel / w_type.step) * w_type.step
            w_type = of_values(kernel)
            self.folded[bn.name] = layer.name
            self.inexact[name] = (f"BatchNormalization '{_compat.inner(bn).name}' folded in: its factor γ/σ is not "
                                  f"a power of two, so the folded kernel is rounded to {w_type.hls()} "
                                  f"({self.fold_bits} fraction bits beyond the learned grid)")
        fraction = w_type.fraction + t_in.fraction
        reduce = tuple(range(kernel.ndim - (2 if kind == "DepthwiseConv2D" else 1)))
        top = max(abs(t_in.low), abs(t_in.high))
        bound = float((np.abs(kernel).sum(axis=reduce).ravel() * top + np.abs(bias)).max())
        acc = covering(-bound, bound, fraction, signed=True)
        codes = bias * 2.0 ** fraction
        if bn is None:
            self.biases[name] = (bias, fraction)
        if bn is None and np.any(codes != np.round(codes)):
            self.inexact[name] = (f"its bias is not on the accumulator grid 2^-{fraction}: hls4ml rounds it "
                                  f"(export with align_biases=True, or call align_to_hls4ml, to move it there)")
        b_type = covering(float(bias.min(initial=0.0)), float(bias.max(initial=0.0)), fraction, signed=True)

        config = inner.get_config()
        act = activation_name(_compat.plain_activation(inner.activation))
        pre = post = None
        if isinstance(inner.activation, _compat.QuantizeAwareActivation):
            pre, post = _compat.activation_vars(inner.activation)
        q = layer.quantize_config.activation_quantizer
        out_grid = self._output_grid(bn if bn is not None else layer, name)
        if act != "linear" and out_grid is not None:
            raise ExportError(f"layer '{name}': an activation followed by a folded BatchNormalization (or an output "
                              f"quantizer) is not supported by export_hls4ml.")
        pre_grid = self._quantizer_bits(name, q, pre)
        post_grid = self._quantizer_bits(name, q, post)
        # linear: one quantizer after the sum; other activations: the sum (pre-quantized for
        # softmax/sigmoid/tanh) feeds an Activation layer that applies the post quantizer.
        result = (out_grid or post_grid or acc) if act == "linear" else (pre_grid or acc)
        layer3 = _keras3_layer(kind, config, name, activation="linear", use_bias=True)
        y = layer3(x)
        layer3.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
        self.precision[name] = {"weight": w_type, "bias": b_type, "accum": acc, "result": result}
        self._float_check(name, acc)
        if act != "linear":
            y, result = self._activation(y, act, f"{name}_{act}", result, post_grid)
        self.out[layer.name] = (y, result)

    def _activation_layer(self, layer, kind: str) -> None:
        inner = _compat.inner(layer)
        x, t = self._source(layer)
        if kind == "ReLU":
            config = inner.get_config()
            if config.get("max_value") is not None or config.get("negative_slope", 0) or config.get("threshold", 0):
                raise ExportError(f"ReLU '{inner.name}' has max_value/negative_slope/threshold: only a plain ReLU "
                                  f"is supported by export_hls4ml.")
            act, pre, post = "relu", None, None
        else:
            act = activation_name(_compat.plain_activation(inner.activation))
            pre = post = None
            if isinstance(inner.activation, _compat.QuantizeAwareActivation):
                pre, post = _compat.activation_vars(inner.activation)
        q = layer.quantize_config.activation_quantizer if isinstance(layer, _compat.QuantizeWrapper) else None
        pre_grid = self._quantizer_bits(f"{inner.name}_input", q, pre)
        if pre_grid is not None:
            x, t = self._activation(x, "linear", f"{inner.name}_input", t, pre_grid)
        quantized = self._quantizer_bits(inner.name, q, post) or self._output_grid(layer)
        self.out[layer.name] = self._activation(x, act, inner.name, t, quantized)

    def _average(self, layer, kind: str) -> None:
        inner = _compat.inner(layer)
        x, t = self._source(layer)
        config = inner.get_config()
        if kind.startswith("Global"):
            count = int(np.prod(x.shape[1:-1]))
            y = getattr(keras.layers, kind)(name=inner.name)(x)
        else:
            count = int(np.prod(config["pool_size"]))
            y = _keras3_layer(kind, config, inner.name)(x)
            if config.get("padding") != "valid":
                self.inexact[inner.name] = "'same' padding averages fewer values at the borders"
        extra = max(math.ceil(math.log2(count)), 0)
        accum = FixedType(t.signed, t.integer + extra, t.fraction + extra)
        if count & (count - 1):
            self.inexact.setdefault(inner.name, f"the average of {count} values (not a power of two) is "
                                                f"truncated in hls4ml's accumulator {accum.hls()}")
        result = self._output_grid(layer) or FixedType(t.signed, t.integer, t.fraction + extra)
        self.precision[inner.name] = {"result": result, "accum": accum}
        self.out[layer.name] = (y, result)

    def _merge(self, layer, kind: str) -> None:
        inner = _compat.inner(layer)
        typed = [self._typed(p, layer) for p in frontend.producers(layer)]
        tensors, types = [x for x, _ in typed], [t for _, t in typed]
        if kind == "Add":
            fraction = max(t.fraction for t in types)
            exact = covering(sum(t.low for t in types), sum(t.high for t in types), fraction,
                             signed=any(t.signed for t in types))
            y = keras.layers.Add(name=inner.name)(tensors)
        else:
            if inner.get_config().get("axis", -1) not in (-1, len(tensors[0].shape) - 1):
                raise ExportError(f"Concatenate '{inner.name}': only the last axis is supported by export_hls4ml.")
            exact = union(types)
            y = keras.layers.Concatenate(axis=-1, name=inner.name)(tensors)
        result = self._output_grid(layer) or exact
        self.precision[inner.name] = {"result": result}
        self.out[layer.name] = (y, result)


def build(model, fold_fraction_bits: int = 8) -> HlsGraph:
    """The :class:`HlsGraph` of a frozen tf_keras bit-pruned ``model`` on pow2 grids."""
    builder = _Builder(model, fold_fraction_bits)
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
