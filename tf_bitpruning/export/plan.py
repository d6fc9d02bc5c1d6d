"""The plan: everything the export graph needs, computed once from the frozen model.

- the grid spec (:mod:`.grids`) of every kernel and activation quantizer;
- ``Conv/Dense -> BatchNormalization`` pairs folded before TFLite sees them: the
  BN factor ``γ/σ`` multiplies the per-channel step, so the folded kernel stays
  on a per-channel b-bit grid and its bias absorbs the rest (a Dense with
  per-channel scales is exported as a 1x1 CONV_2D, which the converter supports);
- the float bias and the b-bit input grid of every kernel layer with a bias
  (for the ``fine_bias`` pass, :mod:`.fine_bias`).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tf_keras as keras

from tf_bitpruning import costs, layer_kinds
from tf_bitpruning.configs import BitPruneQuantizeConfig
from tf_bitpruning.export import _compat
from tf_bitpruning.export.checks import ExportError
from tf_bitpruning.export.grids import ActivationExport, WeightExport, activation_export, int_bits, weight_export
from tf_bitpruning.export.int4 import packed_as
from tf_bitpruning.quantizers import BitlengthQuantizer, WeightBitQuantizer

L = keras.layers


def layer_classes(kinds) -> tuple:
    """The tf_keras layer classes of a table of :mod:`tf_bitpruning.layer_kinds` (for ``isinstance``)."""
    return tuple(getattr(L, kind) for kind in sorted(kinds))


# The tables the export shares with the layout pass (see layer_kinds), as classes.
VALUE_PRESERVING = layer_classes(layer_kinds.VALUE_PRESERVING)
FOLDABLE = layer_classes(layer_kinds.FOLDABLE_PRODUCERS)
SEPARABLE = layer_classes(layer_kinds.SEPARABLE_LAYERS)
PAIRWISE_MERGES = layer_classes(layer_kinds.PAIRWISE_MERGES)
# The TFLite op each kernel layer becomes.
TFLITE_OP = {L.Conv1D: "CONV_2D", L.Conv2D: "CONV_2D", L.DepthwiseConv2D: "DEPTHWISE_CONV_2D",
             L.Dense: "FULLY_CONNECTED", L.Conv2DTranspose: "TRANSPOSE_CONV"}


def bn_factors(bn: L.BatchNormalization, rank: int) -> Tuple[np.ndarray, np.ndarray]:
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


def bn_codes(m: np.ndarray, c: np.ndarray, grid: Optional[ActivationExport]) -> np.ndarray:
    """The int8 code ``k`` (1..127) of each channel's BN factor ``m`` in its 1x1
    depthwise conv (filter step ``|m|/k``, exact for any ``k``), chosen so that the
    offset ``c`` falls closest to the int32 bias grid ``input step · |m|/k``.

    With ``k = 127`` everywhere that grid is up to a fifth of an output step wide
    (one code for the whole factor), and rounding ``c`` onto it moved 1.4 % of a
    DenseNet-like stack's post-concatenation outputs a step off; the best ``k``
    of 127 leaves ~1/250 of that."""
    codes = np.full(m.shape, 127, np.int64)
    if grid is None:
        return codes
    k = np.arange(1, 128, dtype=np.float64)
    for i, (mi, ci) in enumerate(zip(np.abs(m), c)):
        if mi == 0:
            continue
        unit = grid.step * mi / k
        error = np.abs(ci - np.round(ci / unit) * unit)
        codes[i] = int(k[np.lexsort((-k, np.round(error / unit.min(), 6)))[0]])  # least error, then largest k
    return codes


def coarsens(source: ActivationExport, target: ActivationExport) -> bool:
    """Whether TFLite requantizes int8 codes from ``source`` onto ``target`` with a
    multiplier below 1/2 (``source.step / target.step``), which it rounds twice: once to an
    integer at ``2^s`` times the output precision, then in the right shift by ``s``."""
    return source.step < 0.5 * target.step * (1.0 + 1e-6)


def is_linear(activation) -> bool:
    activation = _compat.plain_activation(activation)
    return activation is None or getattr(activation, "__name__", "") == "linear"


# Averages: their output is at least the smallest of their inputs' values.
AVERAGES = layer_classes(layer_kinds.GLOBAL_AVERAGES)

# Layers TFLite runs with the output scale of their input (AVERAGE_POOL_2D).
SAME_SCALE = layer_classes(layer_kinds.AVERAGE_POOLINGS)


def as_depthwise(layer) -> bool:
    """A 2-D average pooling exported as depthwise convs (graph.avg_pool_as_depthwise):
    'valid', or 'same' on an input of known height and width; equal strides."""
    pool = _compat.inner(layer)
    if not (isinstance(pool, L.AveragePooling2D) and pool.data_format == "channels_last"):
        return False
    if pool.strides[0] != pool.strides[1]:
        return False  # TensorFlow's CPU depthwise conv (without oneDNN) takes equal strides only
    if pool.padding == "valid":
        return True
    shape = layer.get_input_shape_at(0)
    return len(shape) == 4 and shape[1] is not None and shape[2] is not None


def pool_bands(size: int, pool: int, stride: int, same: bool) -> List[Tuple[int, int, int]]:
    """The outputs of a pooling along one axis, in bands ``(first input, window, outputs)``:
    within a band every window has the same length (``'same'`` windows are cut at the
    borders, and TensorFlow averages over what is left), and output ``j`` of the band
    reads inputs ``first + j·stride .. + window``, so a band is one 'valid' pooling."""
    if not same:
        return [(0, pool, (size - pool) // stride + 1)]
    outputs = -(-size // stride)
    before = max((outputs - 1) * stride + pool - size, 0) // 2
    bands: List[Tuple[int, int, int]] = []
    for i in range(outputs):
        start, end = max(0, i * stride - before), min(size, i * stride - before + pool)
        if bands and bands[-1][1] == end - start and start == bands[-1][0] + bands[-1][2] * stride:
            bands[-1] = (bands[-1][0], bands[-1][1], bands[-1][2] + 1)
        else:
            bands.append((start, end - start, 1))
    return bands


def _bitpruned(layer) -> bool:
    return isinstance(layer, _compat.QuantizeWrapper) and isinstance(layer.quantize_config,
                                                                    BitPruneQuantizeConfig)


class Plan:
    """Everything the export graph needs, computed once from the frozen model."""

    def __init__(self, model: keras.Model, int4_ops: Sequence[str] = (), fine_bias: bool = True):
        self.model = model
        self.fine_bias = fine_bias
        self.weights: Dict[Tuple[str, str], WeightExport] = {}
        self.activations: Dict[int, ActivationExport] = {}    # id(bits variable) -> export
        self.fold_into: Dict[str, np.ndarray] = {}            # kernel layer name -> BN offset
        self.folded_bn: set = set()                           # BN wrapper layer names
        self.input_grid: Dict[str, ActivationExport] = {}     # kernel layer -> grid of its input
        self.bias: Dict[str, np.ndarray] = {}                 # kernel layer -> float bias (folded)
        self.layers = {layer.name: layer for layer in model.layers}
        self.identity_codes: Dict = {}  # tensor ref -> codes of its identity convs (graph.identity_depthwise)
        folds = self._find_folds(model)
        for layer in model.layers:
            if isinstance(layer, _compat.QuantizeLayer):
                if isinstance(layer.quantizer, BitlengthQuantizer):
                    self._add_activation(layer.quantizer, layer.quantizer_vars, layer.name)
                continue
            if _bitpruned(layer):  # tfmot's own fake quants export as they are
                self._add_layer(layer, folds.get(layer.name), int4_ops)
        for layer in model.layers:
            inner = _compat.inner(layer)
            if (layer.name in self.fold_into or getattr(inner, "use_bias", False)) and any(
                    key[0] == layer.name for key in self.weights):
                grid = self._input_grid(layer)
                if grid is not None:
                    self.input_grid[layer.name] = grid
                self.bias[layer.name] = (self.fold_into[layer.name] if layer.name in self.fold_into
                                         else inner.bias.numpy().astype(np.float32))
                self._fit_bias_codes(layer.name)
                self._limit_bias_codes(layer.name)
        # A global average of values that cannot fall below its learned grid's min (of
        # ReLU outputs, say) needs no clip op: TFLite would run MEAN on its input's
        # grid before the clip, rounding twice (graph.run_wrapper).
        self.lower_bound: Dict[str, float] = {}
        for layer in model.layers:
            if _bitpruned(layer):
                bound = self._lower_bound(layer)
                if bound is not None:
                    self.lower_bound[layer.name] = bound
                elif as_depthwise(layer) and _compat.inner(layer).padding == "same":
                    grid = self._output_grid(layer)  # each band already on it (graph.avg_pool_as_depthwise)
                    if grid is not None:
                        self.lower_bound[layer.name] = grid.lo
        # TFLite's AVERAGE_POOL_2D keeps its input's scale: a 1-D pooling, or a 'same' one of
        # unknown size, the export graph rounds onto the input grid first, then requantizes
        # onto the learned one (a 2-D one runs as depthwise convs, exact: as_depthwise).
        self.same_scale: Dict[str, ActivationExport] = {}
        # BatchNormalization that no kernel absorbs: (multiplier, offset, int8 codes), run
        # as a 1x1 depthwise conv (graph.bn_as_depthwise).
        self.unfolded_bn: Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.depthwise_input: Dict[str, ActivationExport] = {}  # their input grid, when known
        # Value-preserving layers (a max pooling) and the grid their output is on, stated
        # with a fake quant: a max pooling read by a conv and by a 'same' average pooling
        # otherwise gets a DEQUANTIZE for the conv, which the converter leaves in float
        # (InceptionV3's mixed blocks).
        self.preserved: Dict[str, ActivationExport] = {}
        # The grid each concatenation quantizes its inputs onto: its own, or (its quantizer
        # dropped, layout.output_requantized) that of the concatenation it feeds
        # (InceptionV3's mixed9_0 inside mixed9), else its inputs reach the file in float.
        self.concat_grid: Dict[str, ActivationExport] = {}
        users = _compat.consumers(model)
        for layer in model.layers:
            inner = _compat.inner(layer)
            if _bitpruned(layer) and isinstance(inner, L.Concatenate):
                grid = self._concat_grid(layer, users)
                if grid is not None:
                    self.concat_grid[layer.name] = grid
            if _bitpruned(layer) and isinstance(inner, VALUE_PRESERVING) \
                    and _compat.output_quantizer(layer)[0] is None:
                grid = self._output_grid(layer)
                if grid is not None:
                    self.preserved[layer.name] = grid
            if _bitpruned(layer) and isinstance(inner, SAME_SCALE) and not as_depthwise(layer):
                grid = self._input_grid(layer)
                if grid is not None:
                    self.same_scale[layer.name] = grid
            if (_bitpruned(layer) and isinstance(inner, L.BatchNormalization)
                    and layer.name not in self.folded_bn):
                m, c = bn_factors(inner, len(layer.get_input_shape_at(0)))
                self.unfolded_bn[layer.name] = (m, c, bn_codes(m, c, self._input_grid(layer)))
            if _bitpruned(layer) and (layer.name in self.unfolded_bn or as_depthwise(layer)):
                # The depthwise conv reads its input on the grid Keras has it on (through a
                # max pooling, say): without a fake quant there the converter picks a
                # scale of its own for it and requantizes (23 % of DenseNet's first
                # BN outputs a step off).
                grid = self._input_grid(layer)
                if grid is not None:
                    self.depthwise_input[layer.name] = grid

        # SeparableConv layers whose inner tensor (between their kernels) has no learned grid: a
        # SeparableConv1D, or a SeparableConv2D the layout did not split (a config of the user's
        # own, or a model bit-pruned before the split, layer_kinds.SPLIT_LAYERS).
        self.separable = [layer.layer.name for layer in model.layers if _bitpruned(layer) and isinstance(
            _compat.inner(layer), SEPARABLE)]
        # Merges of more than two tensors: TFLite's integer ADD, MUL, MAXIMUM, MINIMUM take two, so
        # the converter chains them and the partial results have no grid (named in the error).
        self.wide_merges = [layer.layer.name for layer in model.layers if _bitpruned(layer) and isinstance(
            _compat.inner(layer), PAIRWISE_MERGES)
            and len(_compat.producers(layer)) > 2]
        # Several plain relu layers reading one tensor (NASNet's cells): each quantizes its
        # input onto its own output grid before the relu (ActivationExport.relu).
        self.relu_first: Dict[str, ActivationExport] = {}
        for readers in users.values():
            grids = {reader.name: self._relu_grid(reader) for reader in readers}
            grids = {name: grid for name, grid in grids.items() if grid is not None}
            if len(grids) > 1:
                self.relu_first.update(grids)
        # Plain relu layers whose input is stored on a grid less than half as fine as their
        # own: TFLite requantizes int8 codes (RELU, QUANTIZE) with MultiplyByQuantizedMultiplier,
        # which for a multiplier below 1/2 rounds x·2^s·multiplier to an integer before the
        # right shift by s: twice (30 % of a NASNet cell's relu outputs a step off). These run
        # as a 1x1 identity depthwise conv with the relu fused (graph.identity_depthwise): the
        # accumulator is 127·x, so the first rounding is 2^-8 of an output step.
        self.relu_rescaled: Dict[str, ActivationExport] = {}
        for layer in model.layers:
            grid = self._relu_grid(layer)
            if grid is None:
                continue
            producers, shape = _compat.producers(layer), layer.get_input_shape_at(0)
            if len(producers) != 1 or not 2 <= len(shape) <= 4 or shape[-1] is None:
                continue
            source = self._output_grid(producers[0], stored=True)
            if source is not None and coarsens(source, grid):
                self.relu_rescaled[layer.name] = grid

    def _relu_grid(self, layer) -> Optional[ActivationExport]:
        """The output grid of a bit-pruned plain relu layer (``Activation("relu")``, a
        ``ReLU()`` without options) called once, else None."""
        inner = _compat.inner(layer)
        if not _bitpruned(layer) or _compat.calls(layer) != 1:
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

    def _find_folds(self, model: keras.Model) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        """Kernel layer name -> BN (multiplier, offset) for every foldable pair."""
        outputs = {id(layer) for layer in _compat.output_layers(model)}
        consumers = _compat.consumers(model)
        folds: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        for layer in model.layers:
            inner = _compat.inner(layer)
            users = consumers.get(id(layer), [])
            if (isinstance(layer, _compat.QuantizeWrapper) and isinstance(inner, FOLDABLE)
                    and is_linear(getattr(inner, "activation", None)) and len(users) == 1
                    and isinstance(_compat.inner(users[0]), L.BatchNormalization) and id(layer) not in outputs
                    and not self._has_activation_quantizer(layer)):
                m, c = bn_factors(_compat.inner(users[0]), len(users[0].get_input_shape_at(0)))
                folds[layer.name] = (m, c)
                self.folded_bn.add(users[0].name)
        return folds

    def _add_layer(self, layer, fold: Optional[Tuple[np.ndarray, np.ndarray]], int4_ops: Sequence[str]) -> None:
        inner = _compat.inner(layer)
        has_bias = fold is not None or bool(getattr(inner, "use_bias", False))
        for weight, quantizer, variables, attr in _compat.weight_quantizers(layer):
            if not isinstance(quantizer, WeightBitQuantizer):
                continue
            code_limit = None
            if self.fine_bias and has_bias:
                op = self.tflite_op(layer, quantizer, fold is not None)
                int4 = (packed_as(op, self.pointwise(layer, quantizer, fold is not None), int4_ops) is not None
                        and int_bits(quantizer, variables).max() <= 4)
                code_limit = 7 if int4 else 127
            self.weights[(layer.name, attr)] = weight_export(
                quantizer, variables, weight, f"{layer.name}/{attr}",
                None if fold is None else fold[0], code_limit)
        if fold is not None:
            bias = getattr(inner, "bias", None)
            b = bias.numpy().astype(np.float64) if getattr(inner, "use_bias", False) else 0.0
            self.fold_into[layer.name] = (b * fold[0] + fold[1]).astype(np.float32)
        for quantizer, variables in costs.activation_tensors(layer):
            if isinstance(quantizer, BitlengthQuantizer):
                self._add_activation(quantizer, variables, layer.name)

    @staticmethod
    def tflite_op(layer, quantizer: WeightBitQuantizer, folded: bool) -> Optional[str]:
        """The builtin op the layer's kernel becomes in the file."""
        op = TFLITE_OP.get(type(_compat.inner(layer)))
        if op == "FULLY_CONNECTED" and (folded or quantizer.per_channel_scale or quantizer.per_channel_bits):
            op = "CONV_2D"  # see graph.dense_as_conv
        return op

    @staticmethod
    def pointwise(layer, quantizer: WeightBitQuantizer, folded: bool) -> bool:
        """Whether the kernel becomes a 1x1, stride-1 CONV_2D (which INT4 packing may
        store as a FULLY_CONNECTED, see :mod:`.layout`)."""
        inner = _compat.inner(layer)
        if type(inner) in (L.Conv1D, L.Conv2D):
            return (all(k == 1 for k in inner.kernel_size) and all(s == 1 for s in inner.strides)
                    and inner.groups == 1)
        return isinstance(inner, L.Dense) and Plan.tflite_op(layer, quantizer, folded) == "CONV_2D"

    def _input_grid(self, layer) -> Optional[ActivationExport]:
        """The b-bit grid of ``layer``'s input, if its producer's output is on one."""
        producers = _compat.producers(layer)
        return self._output_grid(producers[0]) if len(producers) == 1 else None

    def _lower_bound(self, layer) -> Optional[float]:
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
        grid = self._input_grid(layer)
        return None if grid is None else grid.lo

    def _output_grid(self, producer, stored: bool = False) -> Optional[ActivationExport]:
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

    def _concat_grid(self, layer, users) -> Optional[ActivationExport]:
        """The grid of ``layer``'s output quantizer, or of the concatenations it feeds alone."""
        while _bitpruned(layer):
            quantizer, variables = _compat.output_quantizer(layer)
            if quantizer is not None:
                return self.act(variables)
            after = users.get(id(layer), [])
            if len(after) != 1 or not isinstance(_compat.inner(after[0]), L.Concatenate):
                return None
            layer = after[0]
        return None

    def _fit_bias_codes(self, layer_name: str) -> None:
        """Per output channel, the code multiplier ``k`` (up to what the container holds)
        whose int32 bias grid, ``input step × b-bit step / k``, rounds the float bias
        closest (the largest ``k`` of equals). TFLite adds the bias on that grid, and a
        bias off it moves outputs near a rounding midpoint to the other side: with the
        largest power of two alone, 3e-4 of a MobileNetV3's conv outputs, one-step flips
        that grow with depth. Only with ``fine_bias`` and per-channel scales."""
        grid, bias = self.input_grid.get(layer_name), self.bias.get(layer_name)
        if grid is None or bias is None or not self.fine_bias:
            return
        in_step = grid.step / 2.0 ** grid.refine_shift  # fine_bias's refined input (fine_bias.py)
        b = bias.astype(np.float64).reshape(-1)
        for key, spec in self.weights.items():
            if key[0] != layer_name or spec.max_multiplier is None or spec.scale.size != b.size \
                    or spec.scale.ndim == 0:
                continue
            step = spec.scale.astype(np.float64) * spec.multiplier  # each channel's b-bit step
            best, error = spec.multiplier.astype(np.float64), np.full(b.shape, np.inf)
            for k in range(1, int(spec.max_multiplier.max()) + 1):
                unit = in_step * step.reshape(-1) / k
                e = np.abs(b - np.round(b / unit) * unit)
                better = (k <= spec.max_multiplier.reshape(-1)) & (e <= error * (1.0 + 1e-9))
                best = np.where(better.reshape(best.shape), k, best)
                error = np.where(better, e, error)
            spec.multiplier = best.astype(np.int64)
            spec.scale = (step / best).astype(np.float32)

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
                mult = np.maximum(np.floor(mult / 2.0), 1.0)
            spec.multiplier = mult.astype(np.int64)
            spec.scale = (step / mult).astype(np.float32)

    @staticmethod
    def _has_activation_quantizer(layer) -> bool:
        return any(isinstance(q, BitlengthQuantizer) for q, _ in costs.activation_tensors(layer))

    def _add_activation(self, quantizer, variables, where):
        self.activations[id(variables["bits"])] = activation_export(quantizer, variables, where)

    def act(self, variables) -> Optional[ActivationExport]:
        """The grid of the activation quantizer with these variables (None: not ours)."""
        return self.activations.get(id(variables["bits"])) if variables else None
