"""Full-integer TFLite export of a frozen bit-pruned model.

Every tensor is stored in TFLite's int8 container on its learned b-bit grid, so
the int8 model computes the b-bit model on any TFLite/LiteRT runtime:

- a b-bit kernel becomes ``fake_quant(num_bits=8, narrow_range=True)`` of the
  already b-bit-quantized kernel over ``[-127·s', 127·s']`` (per output channel
  where the layer has per-channel scales): at most ``2^b - 1`` int8 codes.
  ``s'`` is the b-bit step ``s``, or ``s / 2^j`` for layers with a bias (see
  ``fine_bias`` in :func:`export_tflite`);
- a b-bit activation with grid ``lo + k·step`` (``k = 0 .. 2^b-1``) becomes
  ``maximum(x, lo)`` followed by ``fake_quant`` over ``[hi - 255·step, hi]``,
  ``hi = lo + (2^b-1)·step``: the int8 saturation at 127 is the clip at the learned
  max, the ``maximum`` the clip at the learned min (fused into a preceding ReLU
  when ``lo = 0``), so at most ``2^b`` int8 codes occur;
- ``Conv/Dense -> BatchNormalization`` pairs are folded here, before TFLite sees
  them: the BN factor ``γ/σ`` multiplies the per-channel step, so the folded kernel
  stays on a per-channel b-bit grid and its bias absorbs the rest (a Dense with
  per-channel scales is exported as a 1x1 CONV_2D, which the converter supports).

The converter (``optimizations=[DEFAULT]``) reads every range from the fake-quant
ops. The flatbuffer is then post-processed with ``flatbuffer_utils``: finer
inputs and int32 biases for low-bit layers (``fine_bias``), filters at ≤ 4 bits
rewritten from INT8 to INT4 (two values per byte, the first in the low nibble)
for the ops LiteRT 2.3 runs that way (CONV_2D, DEPTHWISE_CONV_2D,
FULLY_CONNECTED; it refuses INT2, so 2- and 3-bit filters are stored as INT4
too), and the learned precision of every tensor as metadata.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tensorflow.lite.python import schema_py_generated as schema
from tensorflow.lite.tools import flatbuffer_utils
from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer as tfmot_quantize_layer
from tensorflow_model_optimization.python.core.quantization.keras import quantize_wrapper

from tf_bitpruning import costs, quant_ops
from tf_bitpruning._files import write_atomic
from tf_bitpruning.configs import BitPruneQuantizeConfig
from tf_bitpruning.export import metadata as _metadata
from tf_bitpruning.quantizers import ActivationBitQuantizer, BitlengthQuantizer, WeightBitQuantizer

L = keras.layers

# Layers whose output values are some of their input values (so stay on its grid).
_VALUE_PRESERVING = (L.InputLayer, L.Flatten, L.Reshape, L.Permute, L.Dropout, L.SpatialDropout1D,
                     L.SpatialDropout2D, L.ActivityRegularization, L.MaxPooling1D, L.MaxPooling2D,
                     L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.ZeroPadding1D, L.ZeroPadding2D,
                     L.Cropping1D, L.Cropping2D)

# Builtin ops whose filter (input 1) LiteRT 2.3 runs as INT4 with outputs identical
# to INT8 (measured, tests/test_export.py). INT2 filters are refused.
INT4_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")

_FOLDABLE = (L.Conv1D, L.Conv2D, L.DepthwiseConv2D, L.Dense)
# The TFLite op each kernel layer becomes.
_TFLITE_OP = {L.Conv1D: "CONV_2D", L.Conv2D: "CONV_2D", L.DepthwiseConv2D: "DEPTHWISE_CONV_2D",
              L.Dense: "FULLY_CONNECTED", L.Conv2DTranspose: "TRANSPOSE_CONV"}


class ExportError(RuntimeError):
    """The model cannot be exported as a full-integer TFLite model."""


# -- what every quantized tensor becomes ---------------------------------------------------------

@dataclasses.dataclass
class _ActivationExport:
    bits: int
    lo: float
    step: float

    @property
    def hi(self) -> float:
        return self.lo + (2.0 ** self.bits - 1.0) * self.step

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        if self.bits < 8:
            # The int8 range ends at the b-bit max (saturation clips there); clip below.
            x = tf.nn.relu(x) if self.lo == 0.0 else tf.maximum(x, self.lo)
        top = self.hi
        return tf.quantization.fake_quant_with_min_max_vars(
            x, top - 255.0 * self.step, top, num_bits=8, narrow_range=False)

    @property
    def refine_shift(self) -> int:
        """The largest ``i`` with ``(2^b - 1)·2^i <= 255``."""
        return int(np.floor(np.log2(255.0 / (2.0 ** self.bits - 1.0))))


@dataclasses.dataclass
class _WeightExport:
    kernel: np.ndarray        # b-bit quantized kernel, BN factor folded in
    scale: np.ndarray         # int8 step: scalar, or one per output channel (layout below)
    channel_axes: Tuple[int, ...]  # kernel axes of the output channels (per-channel scale)
    multiplier: np.ndarray    # stored code = b-bit integer × multiplier (like scale)

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


def _int_bits(quantizer: BitlengthQuantizer, variables) -> np.ndarray:
    return np.round(_np(quantizer.bitlength(variables))).astype(np.int64)


def _activation_export(quantizer: ActivationBitQuantizer, variables, where: str) -> _ActivationExport:
    bits = _int_bits(quantizer, variables)
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
    lo, step, _ = quant_ops.activation_grid(tf.constant(rmin), tf.constant(rmax), float(b))
    return _ActivationExport(b, float(lo.numpy()), float(step.numpy()))


def _weight_export(quantizer: WeightBitQuantizer, variables, weight: tf.Variable, where: str,
                   fold: Optional[np.ndarray], code_limit: Optional[int]) -> _WeightExport:
    """The b-bit kernel (BN factor folded in) and its int8 scale.

    The scale is the b-bit step divided by a power of two ``2^j``, the largest with
    ``(2^(b-1) - 1)·2^j <= code_limit`` (``None``: ``j = 0``): the stored codes are
    the b-bit integers times ``2^j``, the same ``2^b - 1`` values at most.
    """
    bits = _int_bits(quantizer, variables)
    if bits.max() > 8:
        raise ExportError(f"{where}: {int(bits.max())}-bit weights do not fit TFLite's int8 "
                          f"container; freeze with max 8 bits.")
    w = tf.cast(weight, tf.float32)
    rank = len(w.shape)
    channel, reduce = quantizer._axes(rank)
    per_channel = quantizer.per_channel_scale or quantizer.per_channel_bits or fold is not None
    axes = reduce if (quantizer.per_channel_scale or quantizer.per_channel_bits) else None
    b = tf.constant(bits.astype(np.float32))
    kernel = _np(quant_ops.quantize_weights_int(w, b, axes))
    scale = _np(quant_ops.weight_scale(w, b, axes)).astype(np.float64)
    levels = 2.0 ** (bits.astype(np.float64) - 1.0) - 1.0
    multiplier = np.ones_like(levels) if code_limit is None else \
        2.0 ** np.maximum(np.floor(np.log2(code_limit / levels)), 0.0)
    if per_channel:
        shape = [kernel.shape[a] if a in channel else 1 for a in range(rank)]
        scale = np.broadcast_to(scale, shape)
        multiplier = np.broadcast_to(multiplier, shape)
        # A channel of zeros: any step represents it; keep the bias scale sane.
        zero = np.max(np.abs(kernel), axis=reduce, keepdims=True) == 0
        scale = np.where(zero, 1.0, scale)
        if fold is not None:
            factor = fold.reshape(shape).astype(np.float32)
            kernel = kernel * factor
            scale = scale * np.maximum(np.abs(factor), 1e-30)
        channels = [kernel.shape[a] for a in channel]
        scale, multiplier = scale.reshape(channels), multiplier.reshape(channels)
    else:
        scale, multiplier = scale.reshape(()), multiplier.reshape(())
    return _WeightExport(kernel.astype(np.float32), (scale / multiplier).astype(np.float32), channel,
                         multiplier.astype(np.int64))


# -- the export graph ----------------------------------------------------------------------------

def _bn_factors(bn: L.BatchNormalization, rank: int) -> Tuple[np.ndarray, np.ndarray]:
    """(multiplier, offset) of an inference-mode BatchNormalization: y = x·m + c."""
    axes = [a % rank for a in ([bn.axis] if isinstance(bn.axis, int) else bn.axis)]
    if axes != [rank - 1]:
        raise ExportError(f"BatchNormalization '{bn.name}' normalizes axis {bn.axis}; only the "
                          f"last (channels) axis can be folded.")
    var = bn.moving_variance.numpy().astype(np.float64)
    mean = bn.moving_mean.numpy().astype(np.float64)
    gamma = bn.gamma.numpy().astype(np.float64) if bn.scale else np.ones_like(var)
    beta = bn.beta.numpy().astype(np.float64) if bn.center else np.zeros_like(var)
    m = gamma / np.sqrt(var + bn.epsilon)
    return m, beta - mean * m


def _inner(layer):
    return layer.layer if isinstance(layer, quantize_wrapper.QuantizeWrapper) else layer


def _consumers(model: keras.Model) -> Dict[int, List[Any]]:
    found: Dict[int, List[Any]] = {}
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            if node.is_input:
                continue
            for producer in tf.nest.flatten(node.inbound_layers):
                found.setdefault(id(producer), []).append(node.layer)
    return found


def _is_linear(activation) -> bool:
    from tensorflow_model_optimization.python.core.quantization.keras import quantize_aware_activation as qaa
    if isinstance(activation, qaa.QuantizeAwareActivation):
        activation = activation.activation
    return activation is None or getattr(activation, "__name__", "") == "linear"


class _Plan:
    """Everything the export graph needs, computed once from the frozen model."""

    def __init__(self, model: keras.Model, int4_ops: Sequence[str] = (), fine_bias: bool = True):
        self.model = model
        self.fine_bias = fine_bias
        self.weights: Dict[Tuple[str, str], _WeightExport] = {}
        self.activations: Dict[int, _ActivationExport] = {}   # id(bits variable) -> export
        self.fold_into: Dict[str, np.ndarray] = {}            # kernel layer name -> BN offset
        self.folded_bn: set = set()                           # BN wrapper layer names
        self.input_grid: Dict[str, _ActivationExport] = {}    # kernel layer -> grid of its input
        self.bias: Dict[str, np.ndarray] = {}                 # kernel layer -> float bias (folded)
        output_layers = {id(x._keras_history.layer) for x in model.outputs}
        consumers = _consumers(model)
        layers = {layer.name: layer for layer in model.layers}

        folds: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        for layer in model.layers:
            inner = _inner(layer)
            users = consumers.get(id(layer), [])
            if (isinstance(layer, quantize_wrapper.QuantizeWrapper) and isinstance(inner, _FOLDABLE)
                    and _is_linear(getattr(inner, "activation", None)) and len(users) == 1
                    and isinstance(_inner(users[0]), L.BatchNormalization) and id(layer) not in output_layers
                    and not self._has_activation_quantizer(layer)):
                m, c = _bn_factors(_inner(users[0]), len(users[0].get_input_shape_at(0)))
                folds[layer.name] = (m, c)
                self.folded_bn.add(users[0].name)

        for layer in model.layers:
            if isinstance(layer, tfmot_quantize_layer.QuantizeLayer):
                if isinstance(layer.quantizer, BitlengthQuantizer):
                    self._add_activation(layer.quantizer, layer.quantizer_vars, layer.name)
                continue
            if not isinstance(layer, quantize_wrapper.QuantizeWrapper):
                continue
            if not isinstance(layer.quantize_config, BitPruneQuantizeConfig):
                continue  # tfmot's own fake quants export as they are
            fold = folds.get(layer.name)
            has_bias = fold is not None or bool(getattr(_inner(layer), "use_bias", False))
            for weight, quantizer, variables in layer._weight_vars:
                if isinstance(quantizer, WeightBitQuantizer):
                    attr = layer._weight_name(weight.name)
                    code_limit = None
                    if fine_bias and has_bias:
                        op = _TFLITE_OP.get(type(_inner(layer)))
                        if op == "FULLY_CONNECTED" and (fold is not None or quantizer.per_channel_scale
                                                        or quantizer.per_channel_bits):
                            op = "CONV_2D"  # see _dense_as_conv
                        int4 = op in int4_ops and _int_bits(quantizer, variables).max() <= 4
                        code_limit = 7 if int4 else 127
                    self.weights[(layer.name, attr)] = _weight_export(
                        quantizer, variables, weight, f"{layer.name}/{attr}",
                        None if fold is None else fold[0], code_limit)
            if fold is not None:
                bias = getattr(_inner(layer), "bias", None)
                b = bias.numpy().astype(np.float64) if getattr(_inner(layer), "use_bias", False) else 0.0
                self.fold_into[layer.name] = (b * fold[0] + fold[1]).astype(np.float32)
            for quantizer, variables in costs._activation_tensors(layer):
                if isinstance(quantizer, BitlengthQuantizer):
                    self._add_activation(quantizer, variables, layer.name)
        for layer in model.layers:
            inner = _inner(layer)
            if (layer.name in self.fold_into or getattr(inner, "use_bias", False)) and any(
                    key[0] == layer.name for key in self.weights):
                grid = self._input_grid(layer)
                if grid is not None:
                    self.input_grid[layer.name] = grid
                self.bias[layer.name] = (self.fold_into[layer.name] if layer.name in self.fold_into
                                         else inner.bias.numpy().astype(np.float32))
                self._limit_bias_codes(layer.name)
        self.layers = layers

    def _input_grid(self, layer) -> Optional[_ActivationExport]:
        """The b-bit grid of ``layer``'s input, if its producer's output is on one."""
        nodes = layer._inbound_nodes
        producers = tf.nest.flatten(nodes[0].inbound_layers) if len(nodes) == 1 else []
        while len(producers) == 1 and isinstance(_inner(producers[0]), _VALUE_PRESERVING) \
                and not isinstance(producers[0], tfmot_quantize_layer.QuantizeLayer):
            nodes = producers[0]._inbound_nodes
            producers = tf.nest.flatten(nodes[0].inbound_layers) if len(nodes) == 1 else []
        if len(producers) != 1:
            return None
        producer = producers[0]
        if isinstance(producer, tfmot_quantize_layer.QuantizeLayer):
            return self.act(producer.quantizer_vars) if producer.quantizer is not None else None
        if not isinstance(producer, quantize_wrapper.QuantizeWrapper) or producer.name in self.folded_bn:
            return None
        if producer._output_quantizers:
            return self.act(producer._output_quantizer_vars)
        activations = producer._quantize_activations
        if activations and activations[-1]._should_post_quantize():
            return self.act(activations[-1]._post_activation_vars)
        return None

    def _limit_bias_codes(self, layer_name: str) -> None:
        """Keeps the int32 bias codes (bias / (input scale × weight scale)) below
        2^30 by lowering the weight code multiplier where a bias is very large."""
        grid, bias = self.input_grid.get(layer_name), self.bias.get(layer_name)
        if grid is None or bias is None:
            return
        for key, spec in self.weights.items():
            if key[0] != layer_name:
                continue
            step = spec.scale.astype(np.float64) * spec.multiplier
            mult = spec.multiplier.astype(np.float64)
            while True:
                worst = np.max(np.abs(bias) / (grid.step * step / mult))
                if worst < 2.0 ** 30 or np.all(mult <= 1):
                    break
                mult = np.maximum(mult / 2.0, 1.0)
            spec.multiplier = mult.astype(np.int64)
            spec.scale = (step / mult).astype(np.float32)

    @staticmethod
    def _has_activation_quantizer(layer) -> bool:
        return any(isinstance(q, BitlengthQuantizer) for q, _ in costs._activation_tensors(layer))

    def _add_activation(self, quantizer, variables, where):
        self.activations[id(variables["bits"])] = _activation_export(quantizer, variables, where)

    def act(self, variables) -> Optional[_ActivationExport]:
        return self.activations.get(id(variables["bits"])) if variables else None


class _ExportActivation:
    """Stands in for tfmot's QuantizeAwareActivation in the export graph."""

    def __init__(self, qaa, plan: _Plan):
        self.qaa = qaa
        self.plan = plan
        self.__name__ = getattr(qaa.activation, "__name__", "activation")

    def __call__(self, x, *args, **kwargs):
        qaa = self.qaa
        if qaa._should_pre_quantize():
            x = self._quantize(x, qaa._pre_activation_vars)
        x = qaa.activation(x, *args, **kwargs)
        if qaa._should_post_quantize():
            x = self._quantize(x, qaa._post_activation_vars)
        return x

    def _quantize(self, x, variables):
        spec = self.plan.act(variables)
        if spec is None:
            return self.qaa.quantizer(x, False, weights=variables)
        return spec(x)


def _call_kwargs(layer, kwargs):
    kwargs = dict(kwargs)
    kwargs.pop("training", None)
    import inspect
    if "training" in inspect.signature(layer.call).parameters:
        kwargs["training"] = False
    return kwargs


def _run_wrapper(layer, plan: _Plan, inputs, kwargs):
    """tfmot's QuantizeWrapper.call with export ops in place of the quantizers."""
    inner = layer.layer
    config = layer.quantize_config
    saved = {}

    def swap(attr, value):
        saved.setdefault(attr, inner.__dict__.get(attr, getattr(inner, attr, None)))
        object.__setattr__(inner, attr, value)

    try:
        if layer.name in plan.folded_bn:
            out = inputs  # folded into the producer's kernel and bias
        else:
            for weight, quantizer, variables in layer._weight_vars:
                attr = layer._weight_name(weight.name)
                spec = plan.weights.get((layer.name, attr))
                value = spec.tensor() if spec is not None else quantizer(weight, False, weights=variables)
                swap(attr, value)
            if layer.name in plan.fold_into:
                swap("use_bias", True)
                swap("bias", tf.constant(plan.fold_into[layer.name]))
            for attr, qaa in zip(config.activation_attrs if hasattr(config, "activation_attrs") else [],
                                 layer._quantize_activations):
                swap(attr, _ExportActivation(qaa, plan))
            kernel = plan.weights.get((layer.name, "kernel"))
            if isinstance(inner, L.Dense) and kernel is not None and kernel.scale.ndim > 0:
                out = _dense_as_conv(inner, inputs, kernel)
            elif type(inner) is L.Conv1D and kernel is not None:
                out = _conv1d_as_conv2d(inner, inputs, kernel)
            else:
                out = inner.call(inputs, **_call_kwargs(inner, kwargs))
        if layer._output_quantizers:
            quantizer = layer._output_quantizers[0]
            spec = plan.act(layer._output_quantizer_vars)
            out = spec(out) if spec is not None else quantizer(out, False, weights=layer._output_quantizer_vars)
        return out
    finally:
        for attr, value in saved.items():
            object.__setattr__(inner, attr, value)


def _dense_as_conv(inner: L.Dense, x: tf.Tensor, spec: _WeightExport) -> tf.Tensor:
    """Dense with per-channel weight scales (a folded BatchNormalization) as a 1x1
    CONV_2D: TFLite's converter cannot transpose a per-channel FULLY_CONNECTED
    filter ("tfl.transpose op has mismatched quantized axes")."""
    n_in, n_out = spec.kernel.shape
    kernel = spec.tensor((1, 1, n_in, n_out))
    y = tf.nn.conv2d(tf.reshape(x, [-1, 1, 1, n_in]), kernel, strides=1, padding="VALID")
    if x.shape.rank == 2:
        y = tf.reshape(y, [-1, n_out])
    else:
        y = tf.reshape(y, tf.concat([tf.shape(x)[:-1], [n_out]], axis=0))
    if inner.use_bias:
        y = tf.nn.bias_add(y, inner.bias)
    return inner.activation(y) if inner.activation is not None else y


def _conv1d_as_conv2d(inner: L.Conv1D, x: tf.Tensor, spec: _WeightExport) -> tf.Tensor:
    """Conv1D as the CONV_2D TFLite runs, with the kernel fake-quantized in its
    4-D shape (the converter cannot reshape a per-channel quantized filter)."""
    if inner.groups != 1 or inner.data_format != "channels_last":
        raise ExportError(f"Conv1D '{inner.name}': grouped or channels_first Conv1D cannot be exported.")
    padding = inner.padding
    if padding == "causal":
        x = tf.pad(x, inner._compute_causal_padding(x))
        padding = "valid"
    kernel = spec.tensor((1,) + tuple(spec.kernel.shape))
    y = tf.nn.conv2d(tf.expand_dims(x, 1), kernel, strides=[1, inner.strides[0]],
                     padding=padding.upper(), dilations=[1, inner.dilation_rate[0]])
    y = tf.squeeze(y, axis=1)
    if inner.use_bias:
        y = tf.nn.bias_add(y, inner.bias)
    return inner.activation(y) if inner.activation is not None else y


def _run_layer(layer, plan: _Plan, args, kwargs):
    if isinstance(layer, quantize_wrapper.QuantizeWrapper) and isinstance(layer.quantize_config,
                                                                           BitPruneQuantizeConfig):
        if len(args) != 1:
            raise ExportError(f"Layer '{layer.name}' is called with {len(args)} positional inputs.")
        return _run_wrapper(layer, plan, args[0], kwargs)
    if isinstance(layer, tfmot_quantize_layer.QuantizeLayer) and layer.quantizer is not None:
        spec = plan.act(layer.quantizer_vars)
        if spec is not None:
            return spec(args[0])
    kwargs = dict(kwargs)
    kwargs.pop("training", None)
    return layer(*args, training=False, **kwargs) if _accepts_training(layer) else layer(*args, **kwargs)


def _accepts_training(layer) -> bool:
    import inspect
    try:
        return "training" in inspect.signature(layer.call).parameters
    except (TypeError, ValueError):
        return False


def export_graph(model: keras.Model, plan: Optional[_Plan] = None) -> Callable[..., Any]:
    """The export graph of a frozen bit-pruned model: a function of the model's
    inputs built from ``fake_quant`` ops (see the module docstring). Useful to
    inspect what :func:`export_tflite` converts; it computes what the model does."""
    if plan is None:
        _check_frozen(model)
        plan = _Plan(model)

    def run(*inputs):
        tensor_dict: Dict[str, List[tf.Tensor]] = {}
        usage = model._tensor_usage_count
        flat = tf.nest.flatten(inputs)
        for x, y in zip(model.inputs, flat):
            tensor_dict[str(id(x))] = [y] * usage[str(id(x))]
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for node in model._nodes_by_depth[depth]:
                if node.is_input or any(t not in tensor_dict for t in node.flat_input_ids):
                    continue
                args, kwargs = node.map_arguments(tensor_dict)
                with tf.name_scope(node.layer.name):
                    outputs = _run_layer(node.layer, plan, args, kwargs)
                for x_id, y in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
                    tensor_dict[x_id] = [y] * usage[x_id]
        outs = [tensor_dict[str(id(x))].pop() for x in model.outputs]
        return outs[0] if len(outs) == 1 else outs

    return run


# -- checks --------------------------------------------------------------------------------------

def _check_frozen(model) -> List[costs.QuantizedTensor]:
    from tf_bitpruning import api
    api._check_model(model, "export_tflite")
    tensors = costs.quantized_tensors(model)
    if not tensors:
        raise ValueError(f"export_tflite: model '{model.name}' has no learned bitlengths. Make it with "
                         f"tfbp.bitprune_model(model), train it, then tfbp.freeze_bitlengths(...).")
    loose = [t.name for t in tensors if not t.quantizer.frozen]
    if loose:
        raise ValueError(
            f"export_tflite: model '{model.name}' is not frozen ({len(loose)} bitlengths are still "
            f"real-valued, e.g. {loose[:3]}). Export needs integer bitlengths: call "
            f"frozen = tfbp.freeze_bitlengths(model), fine-tune `frozen`, and export it.")
    return tensors


def _check_full_integer(model_obj) -> None:
    """Every op of the converted model runs on integer tensors (I/O conversion aside)."""
    float_ops = []
    for sg in model_obj.subgraphs:
        for op in sg.operators:
            name = flatbuffer_utils.opcode_to_name(model_obj, op.opcodeIndex)
            if name in ("QUANTIZE", "DEQUANTIZE"):
                continue
            types = [sg.tensors[i].type for i in list(op.inputs) + list(op.outputs) if i >= 0]
            if schema.TensorType.FLOAT32 in types:
                float_ops.append(name)
    if float_ops:
        raise ExportError(
            f"the converted model still runs {sorted(set(float_ops))} in float: some tensor has no "
            f"quantization range (a layer left in float with skip_layers, or the intermediate of a "
            f"SeparableConv, which has no quantizer). Bit-prune every layer, or pass "
            f"representative_dataset=... so the converter calibrates those tensors at 8 bits.")


# -- conversion ----------------------------------------------------------------------------------

def _as_generator(data) -> Callable[[], Iterable[List[np.ndarray]]]:
    if callable(data):
        return data
    arrays = np.asarray(data, np.float32)

    def gen():
        for i in range(min(len(arrays), 500)):
            yield [arrays[i:i + 1]]

    return gen


def _convert(model: keras.Model, plan: _Plan, run, representative_dataset,
             inference_input_type, inference_output_type) -> bytes:
    specs = [tf.TensorSpec([None] + list(x.shape[1:]), tf.float32, name=x.name.split(":")[0])
             for x in model.inputs]
    fn = tf.function(run, input_signature=specs, autograph=False)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.inference_input_type = inference_input_type
    converter.inference_output_type = inference_output_type
    if representative_dataset is not None:
        # Ranges come from the fake-quant ops; the data only calibrates tensors without one.
        converter.representative_dataset = _as_generator(representative_dataset)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            return converter.convert()
    except Exception as e:  # the converter raises many types
        raise ExportError(f"TFLite conversion of '{model.name}' failed: {e}") from e


# -- INT4 ----------------------------------------------------------------------------------------

# The filter operand of every op that has one.
_FILTER_INPUT = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1}


def pack_int4_values(values: np.ndarray) -> np.ndarray:
    """Packs int8 values in [-8, 7] two per byte, the first in the low nibble."""
    v = np.asarray(values, np.int8).reshape(-1)
    if v.size and (v.min() < -8 or v.max() > 7):
        raise ValueError(f"INT4 holds values in [-8, 7], got [{v.min()}, {v.max()}].")
    nibbles = (v.astype(np.int16) & 0xF).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def unpack_int4_values(packed: np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`pack_int4_values`."""
    p = np.asarray(packed, np.uint8)
    nibbles = np.stack([p & 0xF, p >> 4], axis=1).reshape(-1)[:count].astype(np.int16)
    return np.where(nibbles > 7, nibbles - 16, nibbles).astype(np.int8)


def _filters(model_obj) -> List[Tuple[str, Any, Any]]:
    """(op name, op, tensor) of every constant int8 filter."""
    found = []
    sg = model_obj.subgraphs[0]
    for op in sg.operators:
        name = flatbuffer_utils.opcode_to_name(model_obj, op.opcodeIndex)
        if name in _FILTER_INPUT and len(op.inputs) > _FILTER_INPUT[name]:
            index = op.inputs[_FILTER_INPUT[name]]
            tensor = sg.tensors[index]
            if tensor.type == schema.TensorType.INT8 and tensor.buffer:
                found.append((name, op, tensor))
    return found


def _match_filters(model_obj, weights: Dict[Tuple[str, str], _WeightExport]
                   ) -> Dict[Tuple[str, str], Tuple[str, Any, Any]]:
    """Which flatbuffer op and filter hold which exported kernel (matched by size and scales)."""
    matched: Dict[Tuple[str, str], Tuple[str, Any, Any]] = {}
    for op_name, op, tensor in _filters(model_obj):
        scales = np.asarray(tensor.quantization.scale if tensor.quantization else [], np.float64).reshape(-1)
        size = int(np.prod(tensor.shape))
        for key, spec in weights.items():
            if key in matched or spec.kernel.size != size:
                continue
            want = np.asarray(spec.scale, np.float64).reshape(-1)
            if want.size == scales.size and np.allclose(want, scales, rtol=1e-5, atol=0):
                matched[key] = (op_name, op, tensor)
                break
    return matched


def _opcode_index(model_obj, builtin: int, version: int) -> int:
    for i, code in enumerate(model_obj.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
    code.version = version
    model_obj.operatorCodes.append(code)
    return len(model_obj.operatorCodes) - 1


def _new_buffer(model_obj, data: Optional[np.ndarray] = None) -> int:
    buffer = schema.BufferT()
    buffer.data = data
    model_obj.buffers.append(buffer)
    return len(model_obj.buffers) - 1


def _refine_inputs(model_obj, plan: _Plan, matched) -> List[str]:
    """Gives low-bit layers with a bias an exact-enough int32 bias.

    TFLite stores a bias in int32 at scale ``input step × weight step``; for a
    3-bit input that grid is coarse enough to round a noticeable share of the
    layer's outputs differently than the Keras model, whose bias is float. So the
    layer's b-bit input is re-expressed (one int8 -> int8 QUANTIZE op, exact:
    every b-bit value is on the new grid) on an int8 grid ``2^i`` times finer,
    ``(2^b - 1)·2^i <= 255``, and the bias is requantized from its float value
    at the finer scale. Returns the refined layers.
    """
    sg = model_obj.subgraphs[0]
    refined: Dict[int, int] = {}
    done = []
    for key, (op_name, op, filt) in matched.items():
        layer = key[0]
        grid, bias = plan.input_grid.get(layer), plan.bias.get(layer)
        if grid is None or bias is None or grid.refine_shift == 0 or op_name == "TRANSPOSE_CONV":
            continue
        if len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        in_index, bias_t = int(op.inputs[0]), sg.tensors[op.inputs[2]]
        in_t = sg.tensors[in_index]
        q = in_t.quantization
        if (in_t.type != schema.TensorType.INT8 or bias_t.type != schema.TensorType.INT32 or q is None
                or q.scale is None or len(q.scale) != 1
                or not np.isclose(float(q.scale[0]), grid.step, rtol=1e-5, atol=0)):
            continue
        shift = 2 ** grid.refine_shift
        fine_scale = np.float32(q.scale[0]) / np.float32(shift)
        w_scale = np.asarray(filt.quantization.scale, np.float32)
        b_scale = (fine_scale.astype(np.float64) * w_scale.astype(np.float64)).astype(np.float32)
        if b_scale.size not in (1, bias.size):
            continue
        values = np.round(bias.astype(np.float64) / b_scale.astype(np.float64))
        if np.abs(values).max(initial=0) >= 2 ** 31 - 1:
            continue  # the finer bias would overflow int32: keep the converter's
        if in_index not in refined:
            fine = schema.TensorT()
            fine.shape = in_t.shape
            fine.shapeSignature = in_t.shapeSignature
            fine.type = schema.TensorType.INT8
            fine.name = _metadata._text(in_t.name) + "/refined"
            fine.buffer = _new_buffer(model_obj)
            fine.quantization = schema.QuantizationParametersT()
            fine.quantization.scale = [float(fine_scale)]
            # The b-bit grid ends at int8 127 (see _ActivationExport); keep it there.
            fine.quantization.zeroPoint = [int(127 - (127 - int(q.zeroPoint[0])) * shift)]
            fine.quantization.quantizedDimension = 0
            sg.tensors.append(fine)
            refined[in_index] = len(sg.tensors) - 1
            requantize = schema.OperatorT()
            requantize.opcodeIndex = _opcode_index(model_obj, schema.BuiltinOperator.QUANTIZE, 2)
            requantize.inputs = [in_index]
            requantize.outputs = [refined[in_index]]
            requantize.builtinOptionsType = schema.BuiltinOptions.QuantizeOptions
            requantize.builtinOptions = schema.QuantizeOptionsT()
            producer = [i for i, o in enumerate(sg.operators) if in_index in list(o.outputs)]
            sg.operators.insert(producer[0] + 1 if producer else 0, requantize)
        inputs = list(op.inputs)
        inputs[0] = refined[in_index]
        op.inputs = inputs
        values = values.astype("<i4")
        bias_t.buffer = _new_buffer(model_obj, np.frombuffer(values.tobytes(), np.uint8).copy())
        bias_t.quantization.scale = [float(s) for s in b_scale.reshape(-1)]
        bias_t.quantization.zeroPoint = [0] * b_scale.size
        done.append(layer)
    return done


def _pack_int4(model_obj, matched, bits: Dict[Tuple[str, str], int], ops: Sequence[str]) -> List[Tuple[str, str]]:
    buffer_users: Dict[int, int] = {}
    for sg in model_obj.subgraphs:
        for t in sg.tensors:
            buffer_users[t.buffer] = buffer_users.get(t.buffer, 0) + 1
    packed = []
    for key, (op_name, _, tensor) in matched.items():
        if op_name not in ops or bits[key] > 4 or buffer_users.get(tensor.buffer, 0) != 1:
            continue
        buffer = model_obj.buffers[tensor.buffer]
        values = np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(), np.int8)
        if values.size and np.abs(values.astype(np.int16)).max() > 7:
            continue  # not on a ≤4-bit grid (should not happen for a ≤4-bit tensor)
        buffer.data = pack_int4_values(values)
        tensor.type = schema.TensorType.INT4
        packed.append(key)
    return packed


def _rename_tensors(model_obj, matched, layer_names: Dict[str, str]) -> None:
    """Short, unique tensor names: ``<layer>/kernel`` and ``<layer>/bias`` for the
    filters and biases of exported kernels, the first of the converter's fused
    ``a;b;c`` names elsewhere."""
    sg = model_obj.subgraphs[0]
    wanted: Dict[int, str] = {}
    for key, (_, op, _) in matched.items():
        wanted[int(op.inputs[1])] = f"{layer_names[key[0]]}/{key[1]}"
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            wanted[int(op.inputs[2])] = f"{layer_names[key[0]]}/bias"
    used = set()
    for i, t in enumerate(sg.tensors):
        name = wanted.get(i) or _metadata._text(t.name).split(";")[0]
        if _metadata._text(t.name).endswith("/refined") and not name.endswith("/refined"):
            name += "/refined"
        unique, n = name, 1
        while unique in used:
            unique, n = f"{name}_{n}", n + 1
        used.add(unique)
        t.name = unique


def unpack_int4(path: _metadata.PathLike, out_path: _metadata.PathLike) -> int:
    """Rewrites every INT4 tensor of a ``.tflite`` file as INT8 (for runtimes without
    INT4); the metadata is kept. Returns the number of tensors rewritten."""
    model_obj = flatbuffer_utils.read_model(os.fspath(path))
    count = 0
    for sg in model_obj.subgraphs:
        for t in sg.tensors:
            if t.type == schema.TensorType.INT4 and t.buffer and model_obj.buffers[t.buffer].data is not None:
                buffer = model_obj.buffers[t.buffer]
                values = unpack_int4_values(np.asarray(buffer.data, np.uint8), int(np.prod(t.shape)))
                buffer.data = values.view(np.uint8).copy()
                t.type = schema.TensorType.INT8
                count += 1
    flatbuffer_utils.write_model(model_obj, os.fspath(out_path))
    return count


def _verify_int4(int8_model: bytes, int4_model: bytes) -> None:
    """The INT4 file loads in LiteRT and gives the INT8 file's outputs (builtin kernels)."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:  # LiteRT is optional; the tests check this too
        return
    outputs = []
    for content in (int8_model, int4_model):
        it = Interpreter(model_content=content,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        it.allocate_tensors()
        rng = np.random.default_rng(0)
        for d in it.get_input_details():
            if np.issubdtype(d["dtype"], np.integer):
                info = np.iinfo(d["dtype"])
                x = rng.integers(info.min, info.max, size=d["shape"], endpoint=True)
            else:
                x = rng.uniform(0.0, 1.0, size=d["shape"])
            it.set_tensor(d["index"], x.astype(d["dtype"]))
        it.invoke()
        outputs.append([it.get_tensor(d["index"]) for d in it.get_output_details()])
    if not all(np.array_equal(a, b) for a, b in zip(*outputs)):
        raise ExportError("the INT4-packed model does not reproduce the INT8 model's outputs; "
                          "export with int4=False.")


# -- metadata ------------------------------------------------------------------------------------

def _precision_info(model: keras.Model, tensors: List[costs.QuantizedTensor],
                    storage: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    import tf_bitpruning

    entries, layers = [], {}
    for t in tensors:
        bits = _int_bits(t.quantizer, t.variables)
        entry = {"name": t.name, "layer": t.layer, "kind": t.kind,
                 "bits": int(bits.reshape(-1)[0]) if np.all(bits == bits.reshape(-1)[0]) else round(float(bits.mean()), 4),
                 "elements": int(t.elements)}
        if bits.size > 1 and not np.all(bits == bits.reshape(-1)[0]):
            entry["bits_per_channel"] = [int(b) for b in bits.reshape(-1)]
        if t.kind == "weights":
            entry.update(storage.get(t.name, {"storage": "int8", "tflite_tensor": None}))
        else:
            entry["storage"] = "int8"
        entries.append(entry)
        layers.setdefault(t.layer, {})[t.name.split("/", 1)[1]] = entry["bits"]

    def average(kind):
        chosen = [t for t in tensors if kind is None or t.kind == kind]
        return round(float(costs.average_bits_tensor(chosen)), 4) if chosen else None

    return {"format": _metadata.FORMAT_VERSION, "tool": "tf_bitpruning",
            "version": tf_bitpruning.__version__, "model": model.name,
            "average_bits": {"all": average(None), "weights": average("weights"),
                             "activations": average("activations")},
            "layers": layers, "tensors": entries}


# -- the entry point -----------------------------------------------------------------------------

def export_tflite(model: keras.Model, path: _metadata.PathLike, representative_dataset=None, *,
                  int4: bool = True, int4_ops: Sequence[str] = INT4_OPS,
                  inference_input_type: tf.DType = tf.float32,
                  inference_output_type: tf.DType = tf.float32,
                  verify_int4: bool = True, fine_bias: bool = True) -> Dict[str, Any]:
    """Writes a frozen bit-pruned model as a full-integer TFLite model.

    Every tensor is stored in an int8 container on its learned b-bit grid (at most
    ``2^b - 1`` weight codes, ``2^b`` activation codes), so the file computes the
    b-bit model on any TFLite/LiteRT runtime; filters at ≤ 4 bits are stored as
    INT4 (``int4=True``), and the learned precision of every tensor is written to
    the metadata entry ``"tf_bitpruning.precision"`` (:func:`read_precision`).

    Args:
      model: a model from :func:`tfbp.freeze_bitlengths` (fine-tuned). A model
        that is not frozen is refused with a ``ValueError``: freezing rounds the
        bitlengths, so the caller should fine-tune before exporting.
      path: the ``.tflite`` file to write. It is replaced atomically: a failed
        export leaves no file (and an existing file untouched).
      representative_dataset: optional samples (an array of inputs, or a
        generator function as for ``TFLiteConverter``) to calibrate tensors
        that have no learned quantizer (layers left in float). The learned
        ranges are used wherever they exist.
      int4: pack the filters of ``int4_ops`` whose bitlength is ≤ 4 as INT4.
      int4_ops: the builtin ops whose filters may be INT4.
      inference_input_type, inference_output_type: ``tf.float32`` (default;
        the file quantizes/dequantizes at its ends), ``tf.int8`` or ``tf.uint8``.
      verify_int4: run the INT8 and INT4 files once in LiteRT (when installed)
        and require identical outputs.
      fine_bias: TFLite stores a layer's bias in int32 at scale ``input scale ×
        weight scale``; at b-bit steps that grid is coarse enough to round a
        share of low-bit outputs differently than the Keras model (whose bias is
        float). With ``fine_bias`` the kernels of layers with a bias store their
        b-bit integers times ``2^j`` (the largest that fits the container: 127,
        or 7 for INT4; recorded as ``code_multiplier`` in the metadata), and
        their sub-8-bit inputs are requantized exactly onto a ``2^i`` times finer
        int8 grid (one int8 -> int8 QUANTIZE op each). Values and code counts are
        unchanged; ``False`` keeps every int8 scale equal to its b-bit step.

    Returns:
      The precision metadata written to the file (see :mod:`.metadata`).
    """
    tensors = _check_frozen(model)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"export_tflite: the directory '{directory}' does not exist.")
    bad = sorted(set(int4_ops) - set(_FILTER_INPUT))
    if bad:
        raise ValueError(f"int4_ops: {bad} have no filter to pack; choose from {sorted(_FILTER_INPUT)}.")

    plan = _Plan(model, tuple(int4_ops) if int4 else (), fine_bias)
    content = _convert(model, plan, export_graph(model, plan), representative_dataset,
                       inference_input_type, inference_output_type)
    model_obj = flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    _check_full_integer(model_obj)

    kernels = {(t.wrapper, t.attr): t for t in tensors if t.kind == "weights"}
    names = {key: kernels[key].name for key in plan.weights}
    bits = {key: int(_int_bits(kernels[key].quantizer, kernels[key].variables).max()) for key in plan.weights}
    matched = _match_filters(model_obj, plan.weights)
    if fine_bias:
        _refine_inputs(model_obj, plan, matched)
    _rename_tensors(model_obj, matched, {key[0]: model.get_layer(key[0]).layer.name for key in matched})
    content = bytes(flatbuffer_utils.convert_object_to_bytearray(model_obj))  # the INT8 reference
    packed = _pack_int4(model_obj, matched, bits, tuple(int4_ops)) if int4 else []
    storage = {names[key]: {"storage": "int4" if key in packed else "int8",
                            "tflite_tensor": _metadata._text(tensor.name),
                            "code_multiplier": _int_or_list(plan.weights[key].multiplier)}
               for key, (_, _, tensor) in matched.items()}
    info = _precision_info(model, tensors, storage)
    _metadata.set_metadata(model_obj, _metadata.METADATA_NAME,
                           json.dumps(info, separators=(",", ":")).encode("utf-8"))
    final = flatbuffer_utils.convert_object_to_bytearray(model_obj)
    if packed and verify_int4:
        _verify_int4(content, bytes(final))

    write_atomic(path, bytes(final))
    return info


def _int_or_list(values: np.ndarray):
    flat = np.asarray(values).reshape(-1)
    return int(flat[0]) if np.all(flat == flat[0]) else [int(v) for v in flat]
