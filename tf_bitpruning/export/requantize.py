"""Flatbuffer pass: int8 -> int8 requantizations as a MUL by one.

TFLite writes a change of grid (a concatenation input onto the concatenation's
grid, a linear activation's own grid after a reshape, ...) as a QUANTIZE op from
int8 to int8. XNNPACK, LiteRT's default CPU delegate, runs that with an 8-bit
fixed-point multiplier (``round(256 · s_in / s_out) / 256``): a value up to
``|q| / 512`` steps from where it belongs, so some outputs within a few hundredths
of a step of a grid midpoint round the other way (0.3-0.9 % of a concatenation
input in a DenseNet-like stack; Keras rounds the exact value). A MUL by a constant
1 (int8 code 127 at scale 1/127) computes the same requantization with XNNPACK's
float multiplier instead. A ratio that is a power of two (``fine_bias``'s
refinements) is exact either way and stays a QUANTIZE.
"""

from __future__ import annotations

import numpy as np

from tf_bitpruning.export import metadata as _metadata
from tf_bitpruning.export._compat import schema
from tf_bitpruning.export.flatbuffer import new_buffer, op_name, opcode_index


def _power_of_two(ratio: float) -> bool:
    exponent = np.log2(ratio)
    return abs(exponent - np.round(exponent)) < 1e-6


def precise_requantize(model_obj) -> int:
    """Replaces every int8 -> int8 QUANTIZE whose scale ratio is not a power of two
    by ``MUL(x, 1)``; returns how many."""
    sg = model_obj.subgraphs[0]
    one = None
    replaced = 0
    for op in sg.operators:
        if op_name(model_obj, op) != "QUANTIZE":
            continue
        src, dst = sg.tensors[op.inputs[0]], sg.tensors[op.outputs[0]]
        if src.type != schema.TensorType.INT8 or dst.type != schema.TensorType.INT8:
            continue
        qs, qd = src.quantization, dst.quantization
        if qs is None or qd is None or len(qs.scale) != 1 or len(qd.scale) != 1:
            continue
        if _power_of_two(float(qs.scale[0]) / float(qd.scale[0])):
            continue
        if one is None:
            t = schema.TensorT()
            t.shape = []
            t.type = schema.TensorType.INT8
            t.name = "tf_bitpruning/one"
            t.buffer = new_buffer(model_obj, np.array([127], np.int8).view(np.uint8))
            t.quantization = schema.QuantizationParametersT()
            t.quantization.scale = [1.0 / 127.0]
            t.quantization.zeroPoint = [0]
            sg.tensors.append(t)
            one = len(sg.tensors) - 1
        op.opcodeIndex = opcode_index(model_obj, schema.BuiltinOperator.MUL, 2)
        op.inputs = [int(op.inputs[0]), one]
        op.builtinOptionsType = schema.BuiltinOptions.MulOptions
        op.builtinOptions = schema.MulOptionsT()
        replaced += 1
    return replaced
