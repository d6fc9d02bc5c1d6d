"""Full-integer TFLite export of a frozen bit-pruned model: the pipeline.

Every tensor is stored in TFLite's int8 container on its learned b-bit grid, so
the int8 model computes the b-bit model on any TFLite/LiteRT runtime.
:func:`export_tflite` runs these steps, one module each:

1. :mod:`.checks`     the model is frozen (bitlengths are integers);
2. :mod:`.plan`       grid specs (:mod:`.grids`) of every tensor, BN folding, biases;
3. :mod:`.graph`      the fake-quant graph of the model, built from the plan;
4. :mod:`.convert`    the TFLite converter call (ranges from the fake-quant ops);
5. flatbuffer passes (helpers in :mod:`.flatbuffer`):
   :mod:`.fine_bias`  finer inputs and int32 biases for low-bit layers,
   :mod:`.requantize` int8 -> int8 changes of grid as a MUL by one (exact in XNNPACK),
   :mod:`.rename`     short tensor names,
   :mod:`.int4`       ≤ 4-bit filters stored as INT4 where fast (and LiteRT verification),
   :mod:`.layout`     pointwise CONV_2D written as FULLY_CONNECTED for fast INT4,
   :mod:`.precision`  the learned precision of every tensor as metadata.

Private tfmot/Keras/TFLite APIs are used only through :mod:`._compat`.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

import tensorflow as tf
import tf_keras as keras

from tf_bitpruning._files import write_atomic
from tf_bitpruning.export import metadata as _metadata
from tf_bitpruning.export.align import apply_moves, bias_moves
from tf_bitpruning.export.bias_scale import rescale_biases
from tf_bitpruning.export.checks import (ExportError, check_calibration, check_frozen, check_full_integer,
                                         check_unrolled)
from tf_bitpruning.export.convert import convert
from tf_bitpruning.export.fine_bias import refine_inputs
from tf_bitpruning.export.flatbuffer import match_filters, read, to_bytes
from tf_bitpruning.export.graph import export_graph
from tf_bitpruning.export.grids import int_bits
from tf_bitpruning.export.int4 import (FAST_INT4_OPS, INT4_OPS, Int4Mode, int4_ops_for, pack_filters,
                                       pack_int4_values, unpack_int4, unpack_int4_values)
from tf_bitpruning.export.int4 import verify_int4 as _verify_int4
from tf_bitpruning.export.plan import build_plan
from tf_bitpruning.export.plan_build import unquantized_layers
from tf_bitpruning.export.precision import int_or_list, precision_info, write_precision
from tf_bitpruning.export.rename import rename_tensors
from tf_bitpruning.export.requantize import precise_requantize
from tf_bitpruning.pipeline import pipeline_for

__all__ = ["ExportError", "FAST_INT4_OPS", "INT4_OPS", "export_graph", "export_tflite", "pack_int4_values",
           "unpack_int4", "unpack_int4_values"]


def export_tflite(model: keras.Model, path: _metadata.PathLike, representative_dataset=None, *,
                  int4: Int4Mode = "auto", int4_ops: Optional[Sequence[str]] = None,
                  inference_input_type: tf.DType = tf.float32,
                  inference_output_type: tf.DType = tf.float32,
                  verify_int4: Optional[bool] = None, fine_bias: bool = True,
                  align: bool = True) -> Dict[str, Any]:
    """Writes a frozen bit-pruned model as a full-integer TFLite model.

    Every tensor is stored in an int8 container on its learned b-bit grid (at most
    ``2^b - 1`` weight codes, ``2^b`` activation codes), so the file computes the
    b-bit model on any TFLite/LiteRT runtime; filters at ≤ 4 bits are stored as
    INT4 where that is fast (``int4="auto"``), and the learned precision of every
    tensor is written to the metadata entry ``"tf_bitpruning.precision"``
    (:func:`read_precision`).

    Args:
      model: a model from :func:`tfbp.freeze_bitlengths` (fine-tuned). A model
        that is not frozen is refused with a ``ValueError``: freezing rounds the
        bitlengths, so the caller should fine-tune before exporting.
      path: the ``.tflite`` file to write. It is replaced atomically: a failed
        export leaves no file (and an existing file untouched).
      representative_dataset: optional samples (an array of inputs, or a
        generator function as for ``TFLiteConverter``) to calibrate tensors
        that have no learned quantizer (layers left in float, a LayerNormalization's
        statistics, an LSTM's or GRU's gates and states). The learned ranges are
        used wherever they exist; a model with none of those tensors ignores the
        data, so its float preprocessing (``Rescaling`` before the input quantizer)
        stays float as in Keras.
      int4: which ≤ 4-bit filters are stored as INT4 (two values per byte).
        ``"auto"`` (default): those of the ops LiteRT's default (XNNPACK) runs as
        fast in INT4 as in INT8, :data:`FAST_INT4_OPS` (FULLY_CONNECTED; pointwise
        convolutions are written as FULLY_CONNECTED to qualify), so the file is as
        fast as the INT8 one. ``True``: every ≤ 4-bit filter of :data:`INT4_OPS`,
        the smallest file (INT4 CONV_2D / DEPTHWISE_CONV_2D run on slower builtin
        kernels). ``False``: none (INT8 containers only).
      int4_ops: overrides the ops whose filters ``int4`` packs (any of
        :data:`INT4_OPS`).
      inference_input_type, inference_output_type: ``tf.float32`` (default;
        the file quantizes/dequantizes at its ends), ``tf.int8`` or ``tf.uint8``.
      verify_int4: run the INT8 and INT4 files once in LiteRT's builtin kernels
        and require identical outputs. ``None`` (default): when LiteRT
        (``ai_edge_litert``) is installed; without it a ``UserWarning`` says the
        file is unverified. ``True``: LiteRT is required (``ExportError``
        without it). ``False``: no check.
      fine_bias: TFLite stores a layer's bias in int32 at scale ``input scale ×
        weight scale``; at b-bit steps that grid is coarse enough to round a
        share of low-bit outputs differently than the Keras model (whose bias is
        float). With ``fine_bias`` the kernels of layers with a bias store their
        b-bit integers times ``2^j`` (the largest that fits the container: 127,
        or 7 for INT4; recorded as ``code_multiplier`` in the metadata), and
        their sub-8-bit inputs are requantized exactly onto a ``2^i`` times finer
        int8 grid (one int8 -> int8 QUANTIZE op each; none for 8-bit inputs).
        Values and code counts are unchanged; ``False`` keeps every int8 scale
        equal to its b-bit step.
      align: the file adds each bias on an int32 grid where Keras adds a float;
        at most half a bias step apart, that flips outputs near a rounding midpoint
        (docs/export.md). ``True`` (default): once the file is written, ``model``'s
        biases (or the offsets of BatchNormalizations folded into them) are moved
        in place onto the values the file adds (:func:`align_to_tflite`), so the
        model you evaluate computes what the file computes. ``False``: ``model``
        is left as it was (call :func:`align_to_tflite` later, or train on).

    Returns:
      The precision metadata written to the file (see :mod:`.metadata`).
    """
    given = model
    check_frozen(model)
    check_unrolled(model)  # before a Keras 3 model's twin is built (either Keras' layers)
    model = pipeline_for(model).export_model(model)  # a Keras 3 model's tf_keras twin
    tensors = check_frozen(model)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"export_tflite: the directory '{directory}' does not exist.")
    ops = int4_ops_for(int4, int4_ops)

    plan = build_plan(model, ops, fine_bias)
    check_calibration(sorted(plan.calibrated.values()), representative_dataset)
    left = unquantized_layers(model)
    model_obj, calibrated = _converted(model, plan, representative_dataset, left,
                                       inference_input_type, inference_output_type)

    kernels = {(t.wrapper, t.attr): t for t in tensors if t.kind == "weights"}
    names = {key: kernels[key].name for key in plan.weights}
    bits = {key: int(int_bits(kernels[key].quantizer, kernels[key].variables).max()) for key in plan.weights}
    matched = match_filters(model_obj, plan.weights)
    if fine_bias:
        refine_inputs(model_obj, plan, matched)
    precise_requantize(model_obj)
    rename_tensors(model_obj, matched, {key[0]: model.get_layer(key[0]).layer.name for key in matched})
    content = to_bytes(model_obj)  # the INT8 reference
    packed = pack_filters(model_obj, matched, bits, ops) if ops else []
    storage = {names[key]: {"storage": "int4" if key in packed else "int8",
                            "tflite_tensor": _metadata.text(tensor.name), "tflite_op": op_name,
                            "code_multiplier": int_or_list(plan.weights[key].multiplier)}
               for key, (op_name, _, tensor) in matched.items()}
    info = precision_info(model, tensors, storage, calibrated=sorted(plan.calibrated.values()),
                          float_layers=left if calibrated else ())
    write_precision(model_obj, info)
    final = to_bytes(model_obj)
    if packed and verify_int4 is not False:
        _verify_int4(content, final, required=verify_int4 is True)

    moves = bias_moves(model, read(final), path)[1] if align else []  # before writing: a refusal writes nothing
    write_atomic(path, final)
    apply_moves(given, moves)
    return info


def _converted(model: keras.Model, plan, data, left, inference_input_type, inference_output_type):
    """``(flatbuffer, whether the data calibrated it)``: full-integer (checked), biases on their ops' grids.

    The data calibrates only tensors without a learned grid. Given to the converter when there
    are none, it would also calibrate the float preprocessing before the input quantizer
    (``Rescaling``) into int8 ops on grids of their own, rounding twice where Keras rounds once
    (docs/export.md): so a model whose plan calibrates nothing is converted without it first, and
    with it only where that leaves a tensor in float (a ``gelu``'s or ``hard_sigmoid``'s inside)."""
    if data is not None and not (plan.calibrated or left or plan.separable or plan.wide_merges):
        try:
            return _checked(model, plan, None, left, inference_input_type, inference_output_type), False
        except ExportError:
            pass  # some tensor needs the data
    return _checked(model, plan, data, left, inference_input_type, inference_output_type), data is not None


def _checked(model: keras.Model, plan, data, left, inference_input_type, inference_output_type):
    try:
        content = convert(model, export_graph(model, plan), data, inference_input_type, inference_output_type)
    except ExportError as e:
        if left and data is None:  # the converter's words, and what to do
            raise ExportError(f"{e} The layers {left[:5]} are left in float: pass representative_dataset=... "
                              f"so the converter calibrates them at 8 bits.") from e
        raise
    model_obj = read(content)
    rescale_biases(model_obj)  # the converter can state a bias scale its op does not add it on
    calibrated = data is not None
    check_full_integer(model_obj, float_layers=() if calibrated else plan.separable,
                       wide_merges=() if calibrated else plan.wide_merges)
    return model_obj
