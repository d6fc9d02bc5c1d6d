"""Flatbuffer pass: a pointwise CONV_2D rewritten as a FULLY_CONNECTED.

A 1x1, stride-1 convolution is a matrix product over the channels: TFLite's
CONV_2D filter ``[out, 1, 1, in]`` is byte for byte the FULLY_CONNECTED filter
``[out, in]``, and FULLY_CONNECTED with ``keep_num_dims`` maps ``[1, H, W, in]``
to ``[1, H, W, out]`` with the same per-channel scales, bias and fused
activation. The results are identical; the point is speed: LiteRT's XNNPACK
delegate runs INT4 FULLY_CONNECTED filters but leaves INT4 CONV_2D to a slow
builtin kernel (see :data:`.int4.FAST_INT4_OPS`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tf_bitpruning.export._compat import schema
from tf_bitpruning.export.flatbuffer import op_name, opcode_index

# keep_num_dims needs FULLY_CONNECTED version 5 or later.
_FC_VERSION = 5


def is_pointwise_conv(model_obj, op) -> bool:
    """A CONV_2D with a 1x1 filter over all input channels, stride 1, on a 4-D input."""
    if op_name(model_obj, op) != "CONV_2D" or len(op.inputs) < 2:
        return False
    sg = model_obj.subgraphs[0]
    filt, x = sg.tensors[op.inputs[1]], sg.tensors[op.inputs[0]]
    options = op.builtinOptions
    return (options is not None and options.strideH == 1 and options.strideW == 1
            and filt.shape is not None and len(filt.shape) == 4 and list(filt.shape[1:3]) == [1, 1]
            and x.shape is not None and len(x.shape) == 4 and x.shape[3] == filt.shape[3])


def pointwise_conv_as_fc(model_obj, op: Any) -> None:
    """Rewrites a pointwise CONV_2D (:func:`is_pointwise_conv`) in place as a FULLY_CONNECTED."""
    filt = model_obj.subgraphs[0].tensors[op.inputs[1]]
    options = schema.FullyConnectedOptionsT()
    options.fusedActivationFunction = op.builtinOptions.fusedActivationFunction
    options.weightsFormat = schema.FullyConnectedOptionsWeightsFormat.DEFAULT
    options.keepNumDims = True
    op.builtinOptionsType = schema.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = options
    op.opcodeIndex = opcode_index(model_obj, schema.BuiltinOperator.FULLY_CONNECTED, _FC_VERSION)
    code = model_obj.operatorCodes[op.opcodeIndex]
    code.version = max(int(code.version or 1), _FC_VERSION)
    filt.shape = np.array([filt.shape[0], filt.shape[3]], np.int32)
    if filt.shapeSignature is not None:
        filt.shapeSignature = np.array([filt.shapeSignature[0], filt.shapeSignature[3]], np.int32)
    # Per-channel scales stay on axis 0 (the output channels) in both layouts.
