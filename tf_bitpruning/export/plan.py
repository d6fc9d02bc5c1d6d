"""The plan: everything the export graph needs, computed once from the frozen model
by :func:`build_plan` and frozen (a :class:`Plan` is never edited; the passes after
it, :mod:`.graph` and :mod:`.fine_bias`, only read it).

- the grid spec (:mod:`.grids`) of every kernel and activation quantizer;
- ``Conv/Dense -> BatchNormalization`` pairs folded before TFLite sees them: the
  BN factor ``γ/σ`` multiplies the per-channel step, so the folded kernel stays
  on a per-channel b-bit grid and its bias absorbs the rest (a Dense with
  per-channel scales is exported as a 1x1 CONV_2D, which the converter supports);
- the float bias and the b-bit input grid of every kernel layer with a bias
  (for the ``fine_bias`` pass, :mod:`.fine_bias`);
- how single layers run in the file (the tables below).

The tables are built by the small functions of :mod:`.plan_build`, one per table
family; the grid queries (:meth:`Plan.output_grid`, ...) are those of :class:`.plan_grids.Grids`.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Mapping, Sequence, Tuple

import numpy as np
import tf_keras as keras

from tf_bitpruning.export import plan_build as build
from tf_bitpruning.export.grids import ActivationExport, WeightExport
# The layer rules the export graph and the hls4ml export read from here.
from tf_bitpruning.export.layer_rules import (AVERAGES, FOLDABLE, PAIRWISE_MERGES, SAME_SCALE,  # noqa: F401
                                              SEPARABLE, TFLITE_OP, VALUE_PRESERVING, as_depthwise, bitpruned,
                                              bn_codes, bn_factors, coarsens, is_linear, layer_classes,
                                              pointwise, pool_bands, tflite_op)
from tf_bitpruning.export.plan_grids import Grids

__all__ = ["Plan", "build_plan"]


def _frozen(table) -> Mapping:
    """A read-only view of a copy of ``table``, its numpy arrays (alone or in tuples) read-only too."""
    for value in table.values():
        for part in value if isinstance(value, tuple) else (value,):
            if isinstance(part, np.ndarray):
                part.setflags(write=False)
    return types.MappingProxyType(dict(table))


@dataclasses.dataclass(frozen=True, eq=False)
class Plan(Grids):
    """Everything the export graph needs, computed once from the frozen model
    (:func:`build_plan`); read-only tables, by Keras layer (wrapper) name unless noted.
    Also the grid queries of :class:`.plan_grids.Grids` (``act``, ``output_grid``, ...)."""

    fine_bias: bool
    weights: Mapping[Tuple[str, str], WeightExport]  # (layer, attribute) -> b-bit kernel
    fold_into: Mapping[str, np.ndarray]       # kernel layer -> float bias of its folded BN
    input_grid: Mapping[str, ActivationExport]  # kernel layer with a bias -> grid of its input
    bias: Mapping[str, np.ndarray]            # kernel layer -> float bias (folded)
    # Averages that need no clip op (plan_build.lower_bounds) -> the bound of their output.
    lower_bound: Mapping[str, float]
    # TFLite's AVERAGE_POOL_2D keeps its input's scale: a 1-D pooling, or a 'same' one of
    # unknown size, the export graph rounds onto the input grid first, then requantizes
    # onto the learned one (a 2-D one runs as depthwise convs, exact: as_depthwise).
    same_scale: Mapping[str, ActivationExport]
    # BatchNormalization that no kernel absorbs: (multiplier, offset, int8 codes), run
    # as a 1x1 depthwise conv (graph.bn_as_depthwise).
    unfolded_bn: Mapping[str, Tuple[np.ndarray, np.ndarray, np.ndarray]]
    # The input grid of those and of average poolings run as depthwise convs, when known:
    # without a fake quant there the converter picks a scale of its own for it and
    # requantizes (23 % of DenseNet's first BN outputs a step off).
    depthwise_input: Mapping[str, ActivationExport]
    # Value-preserving layers (a max pooling) and the grid their output is on, stated
    # with a fake quant: a max pooling read by a conv and by a 'same' average pooling
    # otherwise gets a DEQUANTIZE for the conv, which the converter leaves in float
    # (InceptionV3's mixed blocks).
    preserved: Mapping[str, ActivationExport]
    # The grid each concatenation quantizes its inputs onto: its own, or (its quantizer
    # dropped, layout.output_requantized) that of the concatenation it feeds
    # (InceptionV3's mixed9_0 inside mixed9), else its inputs reach the file in float.
    concat_grid: Mapping[str, ActivationExport]
    # SeparableConv layers whose inner tensor (between their kernels) has no learned grid: a
    # SeparableConv1D, or a SeparableConv2D the layout did not split (a config of the user's
    # own, or a model bit-pruned before the split, layer_kinds.SPLIT_LAYERS). Inner names.
    separable: Tuple[str, ...]
    # Merges of more than two tensors: TFLite's integer ADD, MUL, MAXIMUM, MINIMUM take two, so
    # the converter chains them and the partial results have no grid (named in the error).
    wide_merges: Tuple[str, ...]
    # Layers with inner tensors no learned quantizer covers (LayerNormalization's statistics),
    # (or an LSTM's gates and states) calibrated at 8 bits from the representative dataset:
    # wrapper -> (the user's layer name, which tensors).
    calibrated: Mapping[str, Tuple[str, str]]
    # Several plain relu layers reading one tensor (NASNet's cells): each quantizes its
    # input onto its own output grid before the relu (ActivationExport.relu).
    relu_first: Mapping[str, ActivationExport]
    # Plain relu layers whose input is stored on a grid less than half as fine as their
    # own: TFLite requantizes int8 codes (RELU, QUANTIZE) with MultiplyByQuantizedMultiplier,
    # which for a multiplier below 1/2 rounds x·2^s·multiplier to an integer before the
    # right shift by s: twice (30 % of a NASNet cell's relu outputs a step off). These run
    # as a 1x1 identity depthwise conv with the relu fused (graph.identity_depthwise): the
    # accumulator is 127·x, so the first rounding is 2^-8 of an output step.
    relu_rescaled: Mapping[str, ActivationExport]


def build_grids(model: keras.Model, int4_ops: Sequence[str], fine_bias: bool):
    """The first stage: folds, the kernels' and activations' grid specs, and the
    :class:`.plan_grids.Grids` that answers which grid a tensor is on."""
    folds, folded_bn = build.find_folds(model)
    weights, activations = build.quantizer_exports(model, folds, int4_ops, fine_bias)
    return folds, weights, Grids(_frozen(activations), folded_bn)


def build_plan(model: keras.Model, int4_ops: Sequence[str] = (), fine_bias: bool = True) -> Plan:
    """The finished, read-only :class:`Plan` of a frozen bit-pruned model (``int4_ops``:
    the ops whose kernels may be packed to INT4, :mod:`.int4`; ``fine_bias``: see
    :func:`.tflite.export_tflite`)."""
    folds, weights, grids = build_grids(model, int4_ops, fine_bias)
    fold_into = build.fold_offsets(model, folds)
    input_grid, bias = build.bias_tables(model, grids, weights, fold_into)
    unfolded_bn = build.unfolded_bns(model, grids)
    layer_grids, floats = build.layer_grids(model, grids), build.float_layers(model)
    return Plan(
        activations=grids.activations, folded_bn=grids.folded_bn, fine_bias=fine_bias,
        weights=_frozen(build.fit_bias(weights, input_grid, bias, fine_bias)),
        fold_into=_frozen(fold_into), input_grid=_frozen(input_grid), bias=_frozen(bias),
        lower_bound=_frozen(build.lower_bounds(model, grids)), unfolded_bn=_frozen(unfolded_bn),
        depthwise_input=_frozen(build.depthwise_inputs(model, grids, unfolded_bn)),
        relu_first=_frozen(build.relu_first(model, grids)),
        relu_rescaled=_frozen(build.relu_rescaled(model, grids)),
        concat_grid=_frozen(layer_grids["concat_grid"]), preserved=_frozen(layer_grids["preserved"]),
        same_scale=_frozen(layer_grids["same_scale"]),
        separable=floats["separable"], wide_merges=floats["wide_merges"],
        calibrated=_frozen(build.calibrated_layers(model)))

