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
   :mod:`.rename`     short tensor names,
   :mod:`.int4`       ≤ 4-bit filters stored as INT4 (and LiteRT verification),
   :mod:`.precision`  the learned precision of every tensor as metadata.

Private tfmot/Keras/TFLite APIs are used only through :mod:`._compat`.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Sequence

import tensorflow as tf
import tf_keras as keras

from tf_bitpruning._files import write_atomic
from tf_bitpruning.export import metadata as _metadata
from tf_bitpruning.export.checks import ExportError, check_frozen, check_full_integer
from tf_bitpruning.export.convert import convert
from tf_bitpruning.export.fine_bias import refine_inputs
from tf_bitpruning.export.flatbuffer import FILTER_INPUT, match_filters, read, to_bytes
from tf_bitpruning.export.graph import export_graph
from tf_bitpruning.export.grids import int_bits
from tf_bitpruning.export.int4 import (INT4_OPS, pack_filters, pack_int4_values, unpack_int4,
                                       unpack_int4_values, verify_int4 as _verify_int4)
from tf_bitpruning.export.plan import Plan
from tf_bitpruning.export.precision import int_or_list, precision_info, write_precision
from tf_bitpruning.export.rename import rename_tensors

__all__ = ["ExportError", "INT4_OPS", "export_graph", "export_tflite", "pack_int4_values",
           "unpack_int4", "unpack_int4_values"]


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
    tensors = check_frozen(model)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"export_tflite: the directory '{directory}' does not exist.")
    bad = sorted(set(int4_ops) - set(FILTER_INPUT))
    if bad:
        raise ValueError(f"int4_ops: {bad} have no filter to pack; choose from {sorted(FILTER_INPUT)}.")

    plan = Plan(model, tuple(int4_ops) if int4 else (), fine_bias)
    content = convert(model, export_graph(model, plan), representative_dataset,
                      inference_input_type, inference_output_type)
    model_obj = read(content)
    check_full_integer(model_obj)

    kernels = {(t.wrapper, t.attr): t for t in tensors if t.kind == "weights"}
    names = {key: kernels[key].name for key in plan.weights}
    bits = {key: int(int_bits(kernels[key].quantizer, kernels[key].variables).max()) for key in plan.weights}
    matched = match_filters(model_obj, plan.weights)
    if fine_bias:
        refine_inputs(model_obj, plan, matched)
    rename_tensors(model_obj, matched, {key[0]: model.get_layer(key[0]).layer.name for key in matched})
    content = to_bytes(model_obj)  # the INT8 reference
    packed = pack_filters(model_obj, matched, bits, tuple(int4_ops)) if int4 else []
    storage = {names[key]: {"storage": "int4" if key in packed else "int8",
                            "tflite_tensor": _metadata._text(tensor.name),
                            "code_multiplier": int_or_list(plan.weights[key].multiplier)}
               for key, (_, _, tensor) in matched.items()}
    info = precision_info(model, tensors, storage)
    write_precision(model_obj, info)
    final = to_bytes(model_obj)
    if packed and verify_int4:
        _verify_int4(content, final)

    write_atomic(path, final)
    return info
