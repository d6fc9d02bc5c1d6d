"""Flatbuffer pass: every int32 bias on the grid its kernel adds it on.

TFLite's integer CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED and TRANSPOSE_CONV add
the bias's int32 codes to the accumulator as if their scale were ``input scale ×
filter scale``, whatever scale the bias tensor states. The converter can leave the
two apart: it quantizes a bias with its input's *calibrated* scale, then gives that
input the scale of the tensor it was reshaped from (a TRANSPOSE or UNPACK keeps its
input's grid). An unrolled GRU's input projections came out so: their input on the
6-bit grid of the model input (1/63), their biases quantized for the calibrated
1/255, added four times too large at every step (a third of the decided inputs of
``GRU(32)`` on digits took another class). :func:`rescale_biases` puts each such
bias back on its op's grid from the value its codes state (exact up to half a step
of the op's accumulator).
"""

from __future__ import annotations

from typing import List

import numpy as np

from tf_bitpruning.export import metadata as _metadata
from tf_bitpruning.export._compat import schema
from tf_bitpruning.export.flatbuffer import (BIAS_INPUT, DATA_INPUT, FILTER_INPUT, buffer_users, op_name,
                                             set_int32_codes, tensor_scales)


def rescale_biases(model_obj) -> List[str]:
    """Requantizes every int32 bias whose scale is not ``input scale × filter scale``
    onto that grid (in place); returns the names of the biases moved."""
    sg = model_obj.subgraphs[0]
    users = buffer_users(model_obj)
    readers: dict = {}
    for op in sg.operators:
        for index in op.inputs:
            readers[int(index)] = readers.get(int(index), 0) + 1
    moved = []
    for op in sg.operators:
        name = op_name(model_obj, op)
        if name not in BIAS_INPUT or len(op.inputs) <= BIAS_INPUT[name] or op.inputs[BIAS_INPUT[name]] < 0:
            continue
        data, filt = sg.tensors[op.inputs[DATA_INPUT[name]]], sg.tensors[op.inputs[FILTER_INPUT[name]]]
        bias = sg.tensors[op.inputs[BIAS_INPUT[name]]]
        if bias.type != schema.TensorType.INT32 or data.type != schema.TensorType.INT8 or not bias.buffer:
            continue
        stated, input_scale, filter_scale = tensor_scales(bias), tensor_scales(data), tensor_scales(filt)
        if input_scale.size != 1 or not input_scale[0] > 0 or filter_scale.size == 0 or stated.size == 0:
            continue  # (a constant-zero input, the initial state of a recurrent layer: nothing to add to)
        codes = np.frombuffer(bytes(model_obj.buffers[bias.buffer].data), "<i4").astype(np.float64)
        want = (np.float32(input_scale[0]) * filter_scale.astype(np.float32)).astype(np.float64)
        want = np.broadcast_to(want, codes.shape) if want.size == 1 else want
        if want.shape != codes.shape or np.allclose(np.broadcast_to(stated, codes.shape), want, rtol=1e-4, atol=0):
            continue
        values = np.round(codes * np.broadcast_to(stated, codes.shape) / want)
        if np.abs(values).max(initial=0) >= 2 ** 31 - 1:
            raise ValueError(f"the bias '{_metadata.text(bias.name)}' does not fit int32 on its op's grid "
                             f"(input scale {input_scale[0]:g}); please report this as a bug.")
        if readers[int(op.inputs[BIAS_INPUT[name]])] > 1:  # another op reads this bias on its own grid
            bias = _own_copy(sg, op, BIAS_INPUT[name], readers)
            users[bias.buffer] = users.get(bias.buffer, 0) + 1  # the copy reads it too
        set_int32_codes(model_obj, bias, values, want, users)
        moved.append(_metadata.text(bias.name))
    return moved


def _own_copy(sg, op, operand: int, readers: dict):
    """A copy of ``op``'s operand tensor that only ``op`` reads (same buffer, for now)."""
    old = sg.tensors[op.inputs[operand]]
    copy = schema.TensorT()
    for field in ("shape", "shapeSignature", "type", "name", "buffer"):
        setattr(copy, field, getattr(old, field))
    copy.quantization = schema.QuantizationParametersT()
    copy.quantization.quantizedDimension = old.quantization.quantizedDimension
    sg.tensors.append(copy)
    readers[int(op.inputs[operand])] -= 1
    inputs = list(op.inputs)
    inputs[operand] = len(sg.tensors) - 1
    op.inputs = inputs
    readers[inputs[operand]] = 1
    return copy
