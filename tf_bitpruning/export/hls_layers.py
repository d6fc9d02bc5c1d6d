"""How :mod:`.hls_graph` exports each layer kind: the Keras 3 layer hls4ml converts and
the fixed-point types of its tensors (weights, bias, accumulator, result)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Tuple

import keras
import numpy as np

from tf_bitpruning import frontend, quant_ops
from tf_bitpruning.export import _compat
from tf_bitpruning.export.checks import ExportError
from tf_bitpruning.export.fixed import ROUND, SATURATE, FixedType, covering, grid_type, of_values, union
from tf_bitpruning.export.grids import int_bits
from tf_bitpruning.export.layer_rules import bn_factors
from tf_bitpruning.layer_kinds import activation_name, builtin_kind

KERNEL_LAYERS = ("Dense", "Conv1D", "Conv2D", "DepthwiseConv2D")
SAME_TYPE = ("Flatten", "Reshape", "MaxPooling1D", "MaxPooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D")
AVERAGE = ("AveragePooling1D", "AveragePooling2D", "GlobalAveragePooling1D", "GlobalAveragePooling2D")
EXACT_ACTIVATIONS = ("linear", "relu")
# Activations hls4ml computes from lookup tables (inexact), and their output types.
TABLE_ACTIVATIONS = {"softmax": FixedType(False, 1, 15, "RND", "SAT"),
                      "sigmoid": FixedType(False, 1, 15, "RND", "SAT"),
                      "tanh": FixedType(True, 2, 14, "RND", "SAT")}
SUPPORTED = KERNEL_LAYERS + ("BatchNormalization (folded, or alone: inexact)", "ReLU", "Activation", "Add",
                             "Concatenate", "Dropout") + SAME_TYPE + AVERAGE
# Config keys a Keras 3 twin of each layer takes from the tf_keras config.
KEYS = {"Dense": ("units",), "Conv1D": ("filters", "kernel_size", "strides", "padding", "dilation_rate", "groups"),
        "Conv2D": ("filters", "kernel_size", "strides", "padding", "dilation_rate", "groups"),
        "DepthwiseConv2D": ("kernel_size", "strides", "padding", "depth_multiplier", "dilation_rate"),
        "MaxPooling1D": ("pool_size", "strides", "padding"), "MaxPooling2D": ("pool_size", "strides", "padding"),
        "AveragePooling1D": ("pool_size", "strides", "padding"),
        "AveragePooling2D": ("pool_size", "strides", "padding"),
        "Reshape": ("target_shape",), "Concatenate": ("axis",)}


def activation_type(quantizer, variables, where: str) -> Tuple[FixedType, int]:
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


def weight_type(quantizer, variables, kernel: np.ndarray) -> Tuple[FixedType, int]:
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


def keras3_layer(kind: str, config: Dict[str, Any], name: str, **extra) -> keras.layers.Layer:
    if config.get("data_format", "channels_last") != "channels_last":
        raise ExportError(f"layer '{name}': data_format={config['data_format']!r}; hls4ml's io_parallel "
                          f"export here takes channels_last only.")
    args = {k: config[k] for k in KEYS.get(kind, ()) if k in config}
    return getattr(keras.layers, kind)(name=name, **args, **extra)


def kernel(b: "GraphBuilder", layer, kind: str) -> None:
    inner = _compat.inner(layer)
    name = inner.name
    x, t_in = b.source(layer)
    (weight, quantizer, variables, _), = _compat.weight_quantizers(layer)
    if quantizer.grid != "pow2":
        raise ExportError(f"layer '{name}': its kernel is on the '{quantizer.grid}' grid; hls4ml's fixed-point "
                          f"types hold power-of-two grids only: bit-prune with grid='pow2'.")
    kernel = np.asarray(quantizer(weight, False, variables), np.float64)
    w_type, w_bits = weight_type(quantizer, variables, kernel)
    b.bits[name] = {"weight": w_bits}
    bias = np.asarray(inner.bias, np.float64) if getattr(inner, "use_bias", False) else \
        np.zeros(kernel.shape[-1] * (kernel.shape[-2] if kind == "DepthwiseConv2D" else 1))
    users = frontend.consumers(layer)
    linear = activation_name(_compat.plain_activation(inner.activation)) == "linear"
    bn = users[0] if linear and len(users) == 1 and builtin_kind(_compat.inner(users[0]), exact=False) == \
        "BatchNormalization" else None  # after an activation: a BatchNormalization of its own
    if bn is not None:
        m, c = bn_factors(_compat.inner(bn), kernel.ndim if kind != "Dense" else 2)
        m_k = m.reshape(kernel.shape[-2:]) if kind == "DepthwiseConv2D" else m
        kernel = kernel * m_k
        bias = bias * m + c
        w_type = FixedType(True, 0, w_type.fraction + b.fold_bits)
        kernel = np.round(kernel / w_type.step) * w_type.step
        w_type = of_values(kernel)
        b.folded[bn.name] = layer.name
        b.inexact[name] = (f"BatchNormalization '{_compat.inner(bn).name}' folded in: its factor γ/σ is not "
                              f"a power of two, so the folded kernel is rounded to {w_type.hls()} "
                              f"({b.fold_bits} fraction bits beyond the learned grid)")
    fraction = w_type.fraction + t_in.fraction
    reduce = tuple(range(kernel.ndim - (2 if kind == "DepthwiseConv2D" else 1)))
    top = max(abs(t_in.low), abs(t_in.high))
    bound = float((np.abs(kernel).sum(axis=reduce).ravel() * top + np.abs(bias)).max())
    acc = covering(-bound, bound, fraction, signed=True)
    codes = bias * 2.0 ** fraction
    if bn is None:
        b.biases[name] = (bias, fraction)
    if bn is None and np.any(codes != np.round(codes)):
        b.inexact[name] = (f"its bias is not on the accumulator grid 2^-{fraction}: hls4ml rounds it "
                              f"(export with align_biases=True, or call align_to_hls4ml, to move it there)")
    b_type = covering(float(bias.min(initial=0.0)), float(bias.max(initial=0.0)), fraction, signed=True)

    config = inner.get_config()
    act = activation_name(_compat.plain_activation(inner.activation))
    pre = post = None
    if isinstance(inner.activation, _compat.QuantizeAwareActivation):
        pre, post = _compat.activation_vars(inner.activation)
    q = layer.quantize_config.activation_quantizer
    out_grid = b.output_grid(bn if bn is not None else layer, name)
    if act != "linear" and out_grid is not None:
        raise ExportError(f"layer '{name}': an activation followed by a folded BatchNormalization (or an output "
                          f"quantizer) is not supported by export_hls4ml.")
    pre_grid = b.quantizer_bits(name, q, pre)
    post_grid = b.quantizer_bits(name, q, post)
    # linear: one quantizer after the sum; other activations: the sum (pre-quantized for
    # softmax/sigmoid/tanh) feeds an Activation layer that applies the post quantizer.
    result = (out_grid or post_grid or acc) if act == "linear" else (pre_grid or acc)
    layer3 = keras3_layer(kind, config, name, activation="linear", use_bias=True)
    y = layer3(x)
    layer3.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    b.precision[name] = {"weight": w_type, "bias": b_type, "accum": acc, "result": result}
    b.float_check(name, acc)
    if act != "linear":
        y, result = b.activation(y, act, f"{name}_{act}", result, post_grid)
    b.out[layer.name] = (y, result)


def activation_layer(b: "GraphBuilder", layer, kind: str) -> None:
    inner = _compat.inner(layer)
    x, t = b.source(layer)
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
    pre_grid = b.quantizer_bits(f"{inner.name}_input", q, pre)
    if pre_grid is not None:
        x, t = b.activation(x, "linear", f"{inner.name}_input", t, pre_grid)
    quantized = b.quantizer_bits(inner.name, q, post) or b.output_grid(layer)
    b.out[layer.name] = b.activation(x, act, inner.name, t, quantized)


def average(b: "GraphBuilder", layer, kind: str) -> None:
    inner = _compat.inner(layer)
    x, t = b.source(layer)
    config = inner.get_config()
    if kind.startswith("Global"):
        count = int(np.prod(x.shape[1:-1]))
        y = getattr(keras.layers, kind)(name=inner.name)(x)
    else:
        count = int(np.prod(config["pool_size"]))
        y = keras3_layer(kind, config, inner.name)(x)
        if config.get("padding") != "valid":
            b.inexact[inner.name] = "'same' padding averages fewer values at the borders"
    extra = max(math.ceil(math.log2(count)), 0)
    accum = FixedType(t.signed, t.integer + extra, t.fraction + extra)
    if count & (count - 1):
        b.inexact.setdefault(inner.name, f"the average of {count} values (not a power of two) is "
                                            f"truncated in hls4ml's accumulator {accum.hls()}")
    result = b.output_grid(layer) or FixedType(t.signed, t.integer, t.fraction + extra)
    b.precision[inner.name] = {"result": result, "accum": accum}
    b.out[layer.name] = (y, result)


def batchnorm(b: "GraphBuilder", layer) -> None:
    """A BatchNormalization that cannot be folded (after an activation, a pooling, a
    merge): hls4ml's ``x·m + c`` with ``m``, ``c`` rounded to ``fold_fraction_bits``
    significant bits beyond the input's; inexact (``m = γ/σ`` is not a power of two)."""
    inner = _compat.inner(layer)
    x, t = b.source(layer)
    m, c = bn_factors(inner, len(x.shape))
    top = float(np.abs(m).max())
    scale = covering(float(m.min()), float(m.max()), b.fold_bits + 8 - math.ceil(math.log2(top or 1.0)),
                     signed=True)
    scale = dataclasses.replace(scale, rounding=ROUND, saturation=SATURATE)
    fraction = t.fraction + scale.fraction
    m_q = np.round(m / scale.step) * scale.step
    bias = dataclasses.replace(covering(float(c.min()), float(c.max()), fraction, signed=True),
                               rounding=ROUND, saturation=SATURATE)
    ends = np.stack([t.low * m_q, t.high * m_q]) + np.round(c / bias.step) * bias.step
    result = b.output_grid(layer) or covering(float(ends.min()), float(ends.max()), fraction, signed=True)
    bn3 = keras.layers.BatchNormalization(axis=-1, epsilon=inner.epsilon, name=inner.name)
    y = bn3(x)
    ones = np.ones_like(m, np.float32)
    bn3.set_weights([inner.gamma.numpy() if inner.scale else ones, inner.beta.numpy() if inner.center else 0 * ones,
                     inner.moving_mean.numpy(), inner.moving_variance.numpy()])
    b.precision[inner.name] = {"scale": scale, "bias": bias, "result": result}
    b.inexact[inner.name] = (f"BatchNormalization '{inner.name}' on its own: its factor γ/σ is not a power "
                                f"of two, so hls4ml multiplies by it rounded to {scale.hls()} (Keras: float32); "
                                f"an output near a rounding boundary of {result.hls()} can land one step off")
    b.out[layer.name] = (y, result)


def merge(b: "GraphBuilder", layer, kind: str) -> None:
    inner = _compat.inner(layer)
    typed = [b.typed(p, layer) for p in frontend.producers(layer)]
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
    result = b.output_grid(layer) or exact
    b.precision[inner.name] = {"result": result}
    b.out[layer.name] = (y, result)
