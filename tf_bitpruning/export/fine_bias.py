"""Flatbuffer pass: fine biases for low-bit layers (``fine_bias``)."""

from __future__ import annotations

from typing import Dict, List

import numpy as np

from tf_bitpruning.export import metadata as _metadata
from tf_bitpruning.export._compat import schema
from tf_bitpruning.export.flatbuffer import Matched, buffer_users, new_buffer, opcode_index, set_int32_codes
from tf_bitpruning.export.plan import Plan


def refine_inputs(model_obj, plan: Plan, matched: Matched) -> List[str]:
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
    users = buffer_users(model_obj)
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
            fine.name = _metadata.text(in_t.name) + "/refined"
            fine.buffer = new_buffer(model_obj)
            fine.quantization = schema.QuantizationParametersT()
            fine.quantization.scale = [float(fine_scale)]
            # The b-bit grid ends at int8 127 (see grids.ActivationExport); keep it there.
            fine.quantization.zeroPoint = [int(127 - (127 - int(q.zeroPoint[0])) * shift)]
            fine.quantization.quantizedDimension = 0
            sg.tensors.append(fine)
            refined[in_index] = len(sg.tensors) - 1
            requantize = schema.OperatorT()
            requantize.opcodeIndex = opcode_index(model_obj, schema.BuiltinOperator.QUANTIZE, 2)
            requantize.inputs = [in_index]
            requantize.outputs = [refined[in_index]]
            requantize.builtinOptionsType = schema.BuiltinOptions.QuantizeOptions
            requantize.builtinOptions = schema.QuantizeOptionsT()
            producer = [i for i, o in enumerate(sg.operators) if in_index in list(o.outputs)]
            sg.operators.insert(producer[0] + 1 if producer else 0, requantize)
        inputs = list(op.inputs)
        inputs[0] = refined[in_index]
        op.inputs = inputs
        set_int32_codes(model_obj, bias_t, values, b_scale, users)
        done.append(layer)
    return done


