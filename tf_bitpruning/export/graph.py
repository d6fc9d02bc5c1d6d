"""The fake-quant graph: the frozen model re-run with the plan's grid specs.

tfmot's quantizers are swapped for the ``fake_quant`` ops of :mod:`.grids`; BN
layers folded by the plan pass their input through; a per-channel Dense runs as
a 1x1 conv and Conv1D as a CONV_2D, which the converter can quantize per channel.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tf_bitpruning.configs import BitPruneQuantizeConfig, weight_owner
from tf_bitpruning.export import _compat
from tf_bitpruning.export.checks import ExportError, check_frozen
from tf_bitpruning.export.grids import ActivationExport, WeightExport
from tf_bitpruning.export.layer_rules import AVERAGES, VALUE_PRESERVING, as_depthwise, pool_bands
from tf_bitpruning.export.plan import Plan, build_plan
from tf_bitpruning.export.rows import dense_on_rows, einsum_contraction, einsum_on_rows, layer_norm_ops
from tf_bitpruning.layer_kinds import INPUT_CHAIN_LAYERS, TRAINING_ONLY

L = keras.layers


class ExportActivation:
    """Stands in for tfmot's QuantizeAwareActivation in the export graph."""

    def __init__(self, qaa, plan: Plan):
        self.qaa = qaa
        self.plan = plan
        self.__name__ = getattr(qaa.activation, "__name__", "activation")

    def __call__(self, x, *args, **kwargs):
        pre, post = _compat.activation_vars(self.qaa)
        if pre is not None:
            x = self._quantize(x, pre)
        x = self.qaa.activation(x, *args, **kwargs)
        if post is not None:
            x = self._quantize(x, post)
        return x

    def _quantize(self, x, variables):
        spec = self.plan.act(variables)
        if spec is None:
            return self.qaa.quantizer(x, False, weights=variables)
        return spec(x)


def _inference_kwargs(layer, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    kwargs = dict(kwargs)
    kwargs.pop("training", None)
    if _compat.accepts_training(layer):
        kwargs["training"] = False
    return kwargs


# The int8 codes of the identity depthwise convs already reading each tensor of one trace
# of the export graph (tensor ref -> codes, identity_depthwise): the graph's own state, not the plan's.
IdentityCodes = Dict[Any, List[int]]


def run_wrapper(layer, plan: Plan, inputs, kwargs, codes: IdentityCodes):
    """tfmot's QuantizeWrapper.call with export ops in place of the quantizers."""
    inner = layer.layer
    config = layer.quantize_config
    saved: Dict[str, Any] = {}

    def swap(attr, value):
        owner = weight_owner(inner, attr)  # the layer, or its cell (an LSTM's kernels)
        old = _compat.set_attribute(owner, attr, value)
        saved.setdefault((owner, attr), old)

    try:
        if layer.name in plan.relu_rescaled:  # one rounding, in a depthwise conv (plan.coarsens)
            return plan.relu_rescaled[layer.name].relu(identity_depthwise(codes, layer.name, inputs),
                                                       quantize_first=False)
        if layer.name in plan.relu_first:
            return plan.relu_first[layer.name].relu(inputs)
        if layer.name in plan.folded_bn:
            out = inputs  # folded into the producer's kernel and bias
        else:
            for weight, quantizer, variables, attr in _compat.weight_quantizers(layer):
                spec = plan.weights.get((layer.name, attr))
                value = spec.tensor() if spec is not None else quantizer(weight, False, weights=variables)
                swap(attr, value)
            if layer.name in plan.fold_into:
                swap("use_bias", True)
                swap("bias", tf.constant(plan.fold_into[layer.name]))
            for attr, qaa in zip(getattr(config, "activation_attrs", []), _compat.quantize_activations(layer)):
                swap(attr, ExportActivation(qaa, plan))
            grid = plan.depthwise_input.get(layer.name)  # BN / average pooling as a depthwise conv
            if grid is not None:
                inputs = grid(inputs, lower_bound=grid.lo)  # its values are on this grid: no clip
            kernel = plan.weights.get((layer.name, "kernel"))
            if isinstance(inner, L.Dense) and kernel is not None and kernel.scale.ndim > 0:
                out = dense_as_conv(inner, inputs, kernel)
            elif isinstance(inner, L.Dense) and getattr(inputs, "shape", None) is not None \
                    and inputs.shape.rank is not None and inputs.shape.rank > 2:
                out = dense_on_rows(inner, inputs)
            elif isinstance(inner, L.EinsumDense) and einsum_contraction(inner.equation) is not None:
                out = einsum_on_rows(inner, inputs)
            elif type(inner) is L.Conv1D and kernel is not None:
                out = conv1d_as_conv2d(inner, inputs, kernel)
            elif as_depthwise(layer):
                _, variables = _compat.output_quantizer(layer)
                out = avg_pool_as_depthwise(inner, inputs, plan.act(variables))
            elif layer.name in plan.calibrated and isinstance(inner, L.LayerNormalization):
                out = layer_norm_ops(inner, inputs)
            elif layer.name in plan.unfolded_bn:
                m, c, codes = plan.unfolded_bn[layer.name]
                out = bn_as_depthwise(inner.name, m, c, inputs, codes)
            else:
                if isinstance(inner, L.Concatenate):
                    inputs = _on_output_grid(layer, plan, inputs, codes)
                out = inner.call(inputs, **_inference_kwargs(inner, kwargs))
            if layer.name in plan.same_scale:
                out = plan.same_scale[layer.name](out)
            if layer.name in plan.preserved:
                grid = plan.preserved[layer.name]
                out = grid(out, lower_bound=grid.lo)
        quantizer, variables = _compat.output_quantizer(layer)
        if quantizer is not None:
            spec = plan.act(variables)
            # Preprocessing is computed in float from the model input, up to the input quantizer.
            first = (type(inner).__name__ in INPUT_CHAIN_LAYERS
                     or (isinstance(inner, AVERAGES) and layer.name in plan.lower_bound))
            out = (spec(out, plan.lower_bound.get(layer.name), quantize_first=first)
                   if spec is not None
                   else quantizer(out, False, weights=variables))
        return out
    finally:
        for (owner, attr), value in saved.items():
            _compat.set_attribute(owner, attr, value)


def _on_output_grid(layer, plan: Plan, inputs, codes: IdentityCodes):
    """Each input of a concatenation quantized onto its grid (``plan.concat_grid``: its
    output's, or that of the concatenation it feeds alone): the same values
    (quantizing the concatenation is quantizing each part), and TFLite's
    CONCATENATION, which keeps one scale, gets it on every input instead of taking
    one input's (a max pooling's, say) for all.

    An input changes grid in a 1x1 identity depthwise conv (an int32 accumulator
    requantized once) where it is stored on another grid (a QUANTIZE would round twice,
    and the converter can refuse a CONCATENATION whose inputs come on other grids, even
    a float32 ulp apart: "same scale constraint"), or where it reaches the concatenation
    through value-preserving layers (a max pooling, padding) from a tensor on another
    grid: a change of grid right after the pooling would be moved by the converter to
    before it (same-scale ops), onto the tensor other layers read on its own grid
    (DenseNet's first BN read the pooling on the concatenation's grid: 23 % of its
    outputs a step off)."""
    spec = plan.concat_grid.get(layer.name)
    if spec is None:
        return inputs
    producers = _compat.producers(layer)
    out = []
    for i, x in enumerate(inputs):
        producer = producers[i] if len(producers) == len(inputs) else None
        if producer is not None and x.shape.rank is not None and 2 <= x.shape.rank <= 4 \
                and x.shape[-1] is not None:
            grid, stored = plan.output_grid(producer), plan.output_grid(producer, stored=True)
            preserved = (isinstance(_compat.inner(producer), VALUE_PRESERVING)
                         and not isinstance(producer, _compat.QuantizeLayer))
            # A grid change the converter would move, or any change of a stored grid (above).
            if (preserved and grid is not None and not np.isclose(grid.step, spec.step, rtol=1e-6)) \
                    or (stored is not None and stored != spec):
                x = identity_depthwise(codes, f"{layer.name}/input_{i}", x)
        out.append(spec(x))
    return out


def identity_depthwise(codes: IdentityCodes, name: str, x: tf.Tensor) -> tf.Tensor:
    """``x`` through a 1x1 DEPTHWISE_CONV_2D of ones (int8 code ``k``, step ``1/k``: exact),
    where the file changes its grid: TFLite requantizes the int32 accumulator ``k·x``,
    rounding once up to ``2^-8`` of an output step, where a QUANTIZE or RELU of the
    int8 codes would round twice (``plan.coarsens``). Each such conv of one tensor gets a
    code of its own (127, 126, ...): identical ones would be merged, and the merged output
    requantized again for all but one of its grids (``codes``: those given so far, by tensor)."""
    given = codes.setdefault(x.ref(), [])
    k = 127 - len(given)
    given.append(k)
    channels = int(x.shape[-1])
    return bn_as_depthwise(name, np.ones(channels), np.zeros(channels), x, np.full(channels, k))


def dense_as_conv(inner: L.Dense, x: tf.Tensor, spec: WeightExport) -> tf.Tensor:
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


def conv1d_as_conv2d(inner: L.Conv1D, x: tf.Tensor, spec: WeightExport) -> tf.Tensor:
    """Conv1D as the CONV_2D TFLite runs, with the kernel fake-quantized in its
    4-D shape (the converter cannot reshape a per-channel quantized filter)."""
    if inner.groups != 1 or inner.data_format != "channels_last":
        raise ExportError(f"Conv1D '{inner.name}': grouped or channels_first Conv1D cannot be exported.")
    padding = inner.padding
    if padding == "causal":
        x = tf.pad(x, _compat.causal_padding(inner, x))
        padding = "valid"
    kernel = spec.tensor((1,) + tuple(spec.kernel.shape))
    y = tf.nn.conv2d(tf.expand_dims(x, 1), kernel, strides=[1, inner.strides[0]],
                     padding=padding.upper(), dilations=[1, inner.dilation_rate[0]])
    y = tf.squeeze(y, axis=1)
    if inner.use_bias:
        y = tf.nn.bias_add(y, inner.bias)
    return inner.activation(y) if inner.activation is not None else y


def bn_as_depthwise(name: str, m: np.ndarray, c: np.ndarray, x: tf.Tensor,
                    codes: Optional[np.ndarray] = None) -> tf.Tensor:
    """A BatchNormalization that no kernel absorbs (after an Add, a Concatenate, a
    SeparableConv) as the 1x1 DEPTHWISE_CONV_2D TFLite runs in int8: the factor
    ``m = γ/σ`` of each channel is one int8 code ``k`` (``codes``, default 127) at
    step ``|m|/k``, exact, and the offset is the int32 bias; one rounding, onto the
    consumer's grid (``plan.bn_codes`` picks ``k`` so the bias grid fits the offset)."""
    rank = x.shape.rank
    if rank is None or not 2 <= rank <= 4 or x.shape[-1] is None:
        raise ExportError(f"BatchNormalization '{name}' on a rank-{rank} input cannot be exported "
                          f"(only 2-D to 4-D inputs with a known channel count).")
    channels = int(x.shape[-1])
    k = np.full(m.shape, 127.0) if codes is None else codes.astype(np.float64)
    limit = np.where(np.abs(m) > 0, np.abs(m) * 127.0 / k, 1.0).astype(np.float32)
    kernel = tf.quantization.fake_quant_with_min_max_vars_per_channel(
        tf.constant(m.reshape(1, 1, channels), tf.float32), -limit, limit, num_bits=8, narrow_range=True)
    kernel = tf.reshape(kernel, (1, 1, channels, 1))
    shape = tf.shape(x)
    x4 = x if rank == 4 else tf.reshape(x, [-1, 1, 1 if rank == 2 else shape[1], channels])
    y = tf.nn.bias_add(tf.nn.depthwise_conv2d(x4, kernel, strides=[1, 1, 1, 1], padding="VALID"),
                       tf.constant(c, tf.float32))
    return y if rank == 4 else tf.reshape(y, shape)


def avg_pool_as_depthwise(pool: L.AveragePooling2D, x: tf.Tensor,
                          grid: Optional[ActivationExport] = None) -> tf.Tensor:
    """A 2-D average pooling as DEPTHWISE_CONV_2Ds with every tap ``1/k`` (one int8
    code, 127, at step ``1/(127 k)``): the sum is exact in int32 and rounds once, onto
    the pooling's own grid, as in Keras. TFLite's AVERAGE_POOL_2D would round onto its
    input's grid first (its output keeps the input scale): 32 % of an InceptionV3
    branch pooling's outputs a step off.

    A 'same' pooling averages fewer inputs at the borders: one 'valid' conv per band
    of equal windows (:func:`plan.pool_bands`; 3x3 stride 1: corners, edges, inside),
    each onto ``grid`` (clipped there: the plan gives the concatenation a lower bound),
    concatenated back."""
    channels = int(x.shape[-1])
    if pool.padding == "valid":
        rows, cols = [(0, pool.pool_size[0], 0)], [(0, pool.pool_size[1], 0)]
    else:
        rows = pool_bands(int(x.shape[1]), pool.pool_size[0], pool.strides[0], True)
        cols = pool_bands(int(x.shape[2]), pool.pool_size[1], pool.strides[1], True)
    parts = []
    for r0, rk, rn in rows:
        row = []
        for c0, ck, cn in cols:
            part = x
            if len(rows) * len(cols) > 1:
                part = x[:, r0:r0 + (rn - 1) * pool.strides[0] + rk, c0:c0 + (cn - 1) * pool.strides[1] + ck, :]
            taps = float(rk * ck)
            value = np.full((rk, ck, channels), 1.0 / taps, np.float32)
            limit = np.full((channels,), 1.0 / taps, np.float32)
            kernel = tf.quantization.fake_quant_with_min_max_vars_per_channel(
                tf.constant(value), -limit, limit, num_bits=8, narrow_range=True)
            kernel = tf.reshape(kernel, (rk, ck, channels, 1))
            y = tf.nn.depthwise_conv2d(part, kernel, strides=[1, pool.strides[0], pool.strides[1], 1],
                                       padding="VALID")
            row.append(grid(y) if grid is not None and pool.padding == "same" else y)
        parts.append(row[0] if len(row) == 1 else tf.concat(row, axis=2))
    return parts[0] if len(parts) == 1 else tf.concat(parts, axis=1)


def run_layer(layer, plan: Plan, args, kwargs, codes: IdentityCodes):
    """One layer of the export graph (``codes``: see :data:`IdentityCodes`)."""
    if isinstance(layer, _compat.QuantizeWrapper) and isinstance(layer.quantize_config, BitPruneQuantizeConfig):
        if len(args) != 1:
            raise ExportError(f"Layer '{layer.name}' is called with {len(args)} positional inputs.")
        return run_wrapper(layer, plan, args[0], kwargs, codes)
    if isinstance(layer, _compat.QuantizeLayer) and layer.quantizer is not None:
        spec = plan.act(layer.quantizer_vars)
        if spec is not None:
            return spec(args[0], quantize_first=True)
    if type(layer).__name__ in TRAINING_ONLY and len(args) == 1:
        return args[0]  # identity at inference (and no activity-regularization loss in the graph)
    kwargs = dict(kwargs)
    kwargs.pop("training", None)
    return layer(*args, training=False, **kwargs) if _compat.accepts_training(layer) else layer(*args, **kwargs)


def export_graph(model: keras.Model, plan: Optional[Plan] = None) -> Callable[..., Any]:
    """The export graph of a frozen bit-pruned model: a function of the model's
    inputs built from ``fake_quant`` ops (see :mod:`.grids`). Useful to inspect
    what :func:`export_tflite` converts; it computes what the model does."""
    if plan is None:
        check_frozen(model)
        plan = build_plan(model)

    def run(*inputs):
        codes: IdentityCodes = {}
        outs = _compat.run_functional(model, tf.nest.flatten(inputs),
                                      lambda layer, args, kwargs: run_layer(layer, plan, args, kwargs, codes))
        return outs[0] if len(outs) == 1 else outs

    return run
