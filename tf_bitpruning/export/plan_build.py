"""The builders of the export plan's tables (:func:`.plan.build_plan` calls them in
order): each returns new values from the frozen model and what was built before it,
and none edits its arguments.

- :func:`find_folds`: ``Conv/Dense -> BatchNormalization`` pairs;
- :func:`quantizer_exports`: the grid spec (:mod:`.grids`) of every kernel and
  activation quantizer;
- :func:`bias_tables` and :func:`fit_bias`: the float bias and input grid of every kernel
  layer with a bias, and the weight code multipliers whose int32 bias grid suits it;
- :func:`lower_bounds`, :func:`layer_grids`, :func:`unfolded_bns`, :func:`depthwise_inputs`,
  :func:`relu_first`, :func:`relu_rescaled`, :func:`float_layers`: how single layers run
  (see the fields of :class:`.plan.Plan`).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, FrozenSet, Mapping, Optional, Sequence, Tuple

import numpy as np
import tf_keras as keras

from tf_bitpruning import costs
from tf_bitpruning.layer_kinds import CALIBRATED_LAYERS, CALIBRATED_TENSORS, INPUT_CHAIN_LAYERS, PASS_THROUGH_LAYERS
from tf_bitpruning.layout import unquantized_outputs
from tf_bitpruning.registry import is_pass_through
from tf_bitpruning.export import _compat
from tf_bitpruning.export.grids import ActivationExport, WeightExport, int_bits, weight_export
from tf_bitpruning.export.int4 import packed_as
from tf_bitpruning.export.layer_rules import (FOLDABLE, PAIRWISE_MERGES, SAME_SCALE, SEPARABLE, VALUE_PRESERVING,
                                              as_depthwise, bitpruned, bn_codes, bn_factors, coarsens, is_linear,
                                              pointwise, tflite_op)
from tf_bitpruning.export.plan_grids import Grids, layer_activations
from tf_bitpruning.quantizers import BitlengthQuantizer, WeightBitQuantizer

L = keras.layers
Fold = Tuple[np.ndarray, np.ndarray]  # a BN's (multiplier, offset)


def find_folds(model: keras.Model) -> Tuple[Dict[str, Fold], FrozenSet[str]]:
    """Kernel layer name -> BN (multiplier, offset) for every foldable pair, and the
    names of the BN layers folded."""
    outputs = {id(layer) for layer in _compat.output_layers(model)}
    consumers = _compat.consumers(model)
    folds: Dict[str, Fold] = {}
    folded_bn = set()
    for layer in model.layers:
        inner = _compat.inner(layer)
        users = consumers.get(id(layer), [])
        if (isinstance(layer, _compat.QuantizeWrapper) and isinstance(inner, FOLDABLE)
                and is_linear(getattr(inner, "activation", None)) and len(users) == 1
                and isinstance(_compat.inner(users[0]), L.BatchNormalization) and id(layer) not in outputs
                and not any(isinstance(q, BitlengthQuantizer) for q, _ in costs.activation_tensors(layer))):
            folds[layer.name] = bn_factors(_compat.inner(users[0]), len(users[0].get_input_shape_at(0)))
            folded_bn.add(users[0].name)
    return folds, frozenset(folded_bn)


def layer_weights(layer, fold: Optional[Fold], int4_ops: Sequence[str],
                  fine_bias: bool) -> Dict[Tuple[str, str], WeightExport]:
    """The b-bit kernels of a bit-pruned layer (``fold``: the BN folded into it)."""
    inner = _compat.inner(layer)  # (an LSTM's bias is its cell's: not one int32 bias of a kernel op)
    has_bias = fold is not None or (bool(getattr(inner, "use_bias", False)) and hasattr(inner, "bias"))
    weights = {}
    for weight, quantizer, variables, attr in _compat.weight_quantizers(layer):
        if not isinstance(quantizer, WeightBitQuantizer):
            continue
        code_limit = None
        if fine_bias and has_bias:
            op = tflite_op(layer, quantizer, fold is not None)
            int4 = (packed_as(op, pointwise(layer, quantizer, fold is not None), int4_ops) is not None
                    and int_bits(quantizer, variables).max() <= 4)
            code_limit = 7 if int4 else 127
        weights[(layer.name, attr)] = weight_export(
            quantizer, variables, weight, f"{layer.name}/{attr}", None if fold is None else fold[0], code_limit)
    return weights


def quantizer_exports(model: keras.Model, folds: Mapping[str, Fold], int4_ops: Sequence[str], fine_bias: bool
                      ) -> Tuple[Dict[Tuple[str, str], WeightExport], Dict[int, ActivationExport]]:
    """The grid specs of the model's kernels (by ``(layer, attribute)``) and activation
    quantizers (by ``id`` of their bits variable), layer by layer (so an export error
    names the first layer that has one)."""
    weights: Dict[Tuple[str, str], WeightExport] = {}
    activations: Dict[int, ActivationExport] = {}
    for layer in model.layers:
        if bitpruned(layer):
            weights.update(layer_weights(layer, folds.get(layer.name), int4_ops, fine_bias))
        activations.update(layer_activations(layer))
    return weights, activations


def fold_offsets(model: keras.Model, folds: Mapping[str, Fold]) -> Dict[str, np.ndarray]:
    """Kernel layer name -> the float bias its folded BN gives it (``b·m + c``)."""
    offsets = {}
    for layer in model.layers:
        if bitpruned(layer) and layer.name in folds:
            inner, (m, c) = _compat.inner(layer), folds[layer.name]
            b = inner.bias.numpy().astype(np.float64) if getattr(inner, "use_bias", False) else 0.0
            offsets[layer.name] = (b * m + c).astype(np.float32)
    return offsets


def bias_tables(model: keras.Model, grids: Grids, weights: Mapping, fold_into: Mapping[str, np.ndarray]
                ) -> Tuple[Dict[str, ActivationExport], Dict[str, np.ndarray]]:
    """Kernel layer -> the grid of its input (where known), and -> its float bias
    (folded), for every kernel layer of ours with a bias."""
    input_grid: Dict[str, ActivationExport] = {}
    bias: Dict[str, np.ndarray] = {}
    owners = {key[0] for key in weights}
    for layer in model.layers:
        inner = _compat.inner(layer)
        if (layer.name in fold_into or (getattr(inner, "use_bias", False) and hasattr(inner, "bias"))) \
                and layer.name in owners:
            grid = grids.layer_input_grid(layer)
            if grid is not None:
                input_grid[layer.name] = grid
            bias[layer.name] = (fold_into[layer.name] if layer.name in fold_into
                                else inner.bias.numpy().astype(np.float32))
    return input_grid, bias


def fit_bias_codes(spec: WeightExport, grid: ActivationExport, bias: np.ndarray) -> WeightExport:
    """Per output channel, the code multiplier ``k`` (up to what the container holds)
    whose int32 bias grid, ``input step × b-bit step / k``, rounds the float bias
    closest (the largest ``k`` of equals). TFLite adds the bias on that grid, and a
    bias off it moves outputs near a rounding midpoint to the other side: with the
    largest power of two alone, 3e-4 of a MobileNetV3's conv outputs, one-step flips
    that grow with depth. Only per-channel scales (else ``spec`` as it is)."""
    b = bias.astype(np.float64).reshape(-1)
    if spec.max_multiplier is None or spec.scale.size != b.size or spec.scale.ndim == 0:
        return spec
    in_step = grid.step / 2.0 ** grid.refine_shift  # fine_bias's refined input (fine_bias.py)
    step = spec.scale.astype(np.float64) * spec.multiplier  # each channel's b-bit step
    best, error = spec.multiplier.astype(np.float64), np.full(b.shape, np.inf)
    for k in range(1, int(spec.max_multiplier.max()) + 1):
        unit = in_step * step.reshape(-1) / k
        e = np.abs(b - np.round(b / unit) * unit)
        better = (k <= spec.max_multiplier.reshape(-1)) & (e <= error * (1.0 + 1e-9))
        best = np.where(better.reshape(best.shape), k, best)
        error = np.where(better, e, error)
    return dataclasses.replace(spec, multiplier=best.astype(np.int64), scale=(step / best).astype(np.float32))


def limit_bias_codes(spec: WeightExport, grid: ActivationExport, bias: np.ndarray) -> WeightExport:
    """``spec`` with its int32 bias codes (bias / (input scale × weight scale)) below
    2^30: the weight code multiplier lowered where a bias is very large."""
    step = spec.scale.astype(np.float64) * spec.multiplier
    mult = spec.multiplier.astype(np.float64)
    while True:
        worst = np.max(np.abs(bias) / (grid.step * step / mult))
        if worst < 2.0 ** 30 or np.all(mult <= 1):
            break
        mult = np.maximum(np.floor(mult / 2.0), 1.0)
    return dataclasses.replace(spec, multiplier=mult.astype(np.int64), scale=(step / mult).astype(np.float32))


def fit_bias(weights: Mapping[Tuple[str, str], WeightExport], input_grid: Mapping[str, ActivationExport],
             bias: Mapping[str, np.ndarray], fine_bias: bool) -> Dict[Tuple[str, str], WeightExport]:
    """The kernels with code multipliers that suit their layer's bias (``fine_bias``:
    :func:`fit_bias_codes`) and keep its int32 codes in range (:func:`limit_bias_codes`)."""
    fitted = {}
    for key, spec in weights.items():
        grid, b = input_grid.get(key[0]), bias.get(key[0])
        if grid is not None and b is not None:
            if fine_bias:
                spec = fit_bias_codes(spec, grid, b)
            spec = limit_bias_codes(spec, grid, b)
        fitted[key] = spec
    return fitted


def lower_bounds(model: keras.Model, grids: Grids) -> Dict[str, float]:
    """Averages whose output cannot fall below their input grid's min (of ReLU outputs,
    say), and 'same' average poolings run as depthwise convs (each band already on the
    output grid, graph.avg_pool_as_depthwise): they need no clip op, where TFLite would run
    MEAN on its input's grid before the clip, rounding twice (graph.run_wrapper)."""
    bounds: Dict[str, float] = {}
    for layer in model.layers:
        if bitpruned(layer):
            bound = grids.average_lower_bound(layer)
            if bound is not None:
                bounds[layer.name] = bound
            elif as_depthwise(layer) and _compat.inner(layer).padding == "same":
                grid = grids.output_grid(layer)
                if grid is not None:
                    bounds[layer.name] = grid.lo
    return bounds


def _grid_table(model: keras.Model, grid_of, where) -> Dict[str, ActivationExport]:
    """Layer name -> ``grid_of(layer)`` for the bit-pruned layers ``where(layer)`` holds and
    that have one."""
    table = {}
    for layer in model.layers:
        if bitpruned(layer) and where(layer):
            grid = grid_of(layer)
            if grid is not None:
                table[layer.name] = grid
    return table


def layer_grids(model: keras.Model, grids: Grids) -> Dict[str, Dict[str, ActivationExport]]:
    """The ``concat_grid``, ``preserved`` and ``same_scale`` tables of :class:`.plan.Plan`."""
    users = _compat.consumers(model)
    return {
        "concat_grid": _grid_table(model, lambda layer: grids.concat_target_grid(layer, users),
                                   lambda layer: isinstance(_compat.inner(layer), L.Concatenate)),
        "preserved": _grid_table(model, grids.output_grid,
                                 lambda layer: isinstance(_compat.inner(layer), VALUE_PRESERVING)
                                 and _compat.output_quantizer(layer)[0] is None),
        "same_scale": _grid_table(model, grids.layer_input_grid,
                                  lambda layer: isinstance(_compat.inner(layer), SAME_SCALE)
                                  and not as_depthwise(layer)),
    }


def unfolded_bns(model: keras.Model, grids: Grids) -> Dict[str, Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """BatchNormalization that no kernel absorbs -> (multiplier, offset, int8 codes)."""
    table = {}
    for layer in model.layers:
        if bitpruned(layer) and isinstance(_compat.inner(layer), L.BatchNormalization) \
                and layer.name not in grids.folded_bn:
            m, c = bn_factors(_compat.inner(layer), len(layer.get_input_shape_at(0)))
            table[layer.name] = (m, c, bn_codes(m, c, grids.layer_input_grid(layer)))
    return table


def depthwise_inputs(model: keras.Model, grids: Grids, unfolded_bn: Mapping) -> Dict[str, ActivationExport]:
    """The input grid of each layer run as a depthwise conv (an unfolded BN, an average pooling)."""
    return _grid_table(model, grids.layer_input_grid,
                       lambda layer: layer.name in unfolded_bn or as_depthwise(layer))


def calibrated_layers(model: keras.Model) -> Dict[str, Tuple[str, str]]:
    """Bit-pruned layers with inner tensors that no learned quantizer covers
    (``layer_kinds.CALIBRATED_LAYERS``), and the model outputs left float
    (``quantize_outputs=False``): wrapper name -> (the user's layer name, which tensors)."""
    table = {layer.name: (layer.layer.name, CALIBRATED_TENSORS[type(_compat.inner(layer)).__name__])
             for layer in model.layers
             if bitpruned(layer) and type(_compat.inner(layer)).__name__ in CALIBRATED_LAYERS}
    for name in unquantized_outputs(model):  # quantize_outputs=False
        table.setdefault(name, (model.get_layer(name).layer.name, "output"))
    return table


def unquantized_layers(model: keras.Model) -> Tuple[str, ...]:
    """Layers left in float (``skip_layers``) that compute something: the converter calibrates
    them (``representative_dataset``). Not the ones that only move values."""
    return tuple(layer.name for layer in model.layers
                 if not isinstance(layer, (_compat.QuantizeWrapper, _compat.QuantizeLayer))
                 and type(layer).__name__ not in PASS_THROUGH_LAYERS | INPUT_CHAIN_LAYERS
                 and not is_pass_through(layer))


def float_layers(model: keras.Model) -> Dict[str, Tuple[str, ...]]:
    """The ``separable`` and ``wide_merges`` layers of :class:`.plan.Plan` (inner names)."""
    ours = [layer for layer in model.layers if bitpruned(layer)]
    return {
        "separable": tuple(layer.layer.name for layer in ours if isinstance(_compat.inner(layer), SEPARABLE)),
        "wide_merges": tuple(layer.layer.name for layer in ours if isinstance(_compat.inner(layer), PAIRWISE_MERGES)
                             and len(_compat.producers(layer)) > 2),
    }


def relu_first(model: keras.Model, grids: Grids) -> Dict[str, ActivationExport]:
    """Plain relu layers that read one tensor with others -> their own output grid."""
    table: Dict[str, ActivationExport] = {}
    for readers in _compat.consumers(model).values():
        found = {reader.name: grids.relu_grid(reader) for reader in readers}
        found = {name: grid for name, grid in found.items() if grid is not None}
        if len(found) > 1:
            table.update(found)
    return table


def relu_rescaled(model: keras.Model, grids: Grids) -> Dict[str, ActivationExport]:
    """Plain relu layers whose input is stored on a grid less than half as fine as
    their own (:func:`.layer_rules.coarsens`) -> their own output grid."""
    table: Dict[str, ActivationExport] = {}
    for layer in model.layers:
        grid = grids.relu_grid(layer)
        if grid is None:
            continue
        producers, shape = _compat.producers(layer), layer.get_input_shape_at(0)
        if len(producers) != 1 or not 2 <= len(shape) <= 4 or shape[-1] is None:
            continue
        source = grids.output_grid(producers[0], stored=True)
        if source is not None and coarsens(source, grid):
            table[layer.name] = grid
    return table
