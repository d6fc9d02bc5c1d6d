"""Helpers the flatbuffer passes share: find the filters, match them to the
plan's kernels, add opcodes and buffers."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from tf_bitpruning.export._compat import flatbuffer_utils, schema
from tf_bitpruning.export.grids import WeightExport

# The filter operand of every op that has one.
FILTER_INPUT = {"CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "FULLY_CONNECTED": 1, "TRANSPOSE_CONV": 1}
# The bias operand of each op that adds one, and its input operand (TRANSPOSE_CONV's first is the output shape).
BIAS_INPUT = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3}
DATA_INPUT = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 0, "FULLY_CONNECTED": 0, "TRANSPOSE_CONV": 2}
# The table operand of the ops that look values up (an Embedding's GATHER; never packed to INT4).
TABLE_INPUT = {"GATHER": 0}

# (op name, op, filter tensor) of one exported kernel, keyed by (wrapper name, attribute).
Matched = Dict[Tuple[str, str], Tuple[str, Any, Any]]


def read(content: bytes) -> "schema.ModelT":
    return flatbuffer_utils.read_model_from_bytearray(bytearray(content))


def to_bytes(model_obj) -> bytes:
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model_obj))


def op_name(model_obj, op) -> str:
    return flatbuffer_utils.opcode_to_name(model_obj, op.opcodeIndex)


def filters(model_obj) -> List[Tuple[str, Any, Any]]:
    """(op name, op, tensor) of every constant int8 filter (and lookup table)."""
    found = []
    sg = model_obj.subgraphs[0]
    operand = {**FILTER_INPUT, **TABLE_INPUT}
    for op in sg.operators:
        name = op_name(model_obj, op)
        if name in operand and len(op.inputs) > operand[name]:
            index = op.inputs[operand[name]]
            tensor = sg.tensors[index]
            if tensor.type == schema.TensorType.INT8 and tensor.buffer:
                found.append((name, op, tensor))
    return found


def match_filters(model_obj, weights: Dict[Tuple[str, str], WeightExport]) -> Matched:
    """Which flatbuffer op and filter hold which exported kernel (matched by size and scales)."""
    matched: Matched = {}
    for op_name_, op, tensor in filters(model_obj):
        scales = tensor_scales(tensor)
        size = int(np.prod(tensor.shape))
        for key, spec in weights.items():
            if key in matched or spec.kernel.size != size:
                continue
            want = np.asarray(spec.scale, np.float64).reshape(-1)
            if want.size == scales.size and np.allclose(want, scales, rtol=1e-5, atol=0):
                matched[key] = (op_name_, op, tensor)
                break
    return matched


def tensor_scales(tensor) -> np.ndarray:
    """A tensor's quantization scales (float64, flat; empty if it has none)."""
    q = tensor.quantization
    return np.asarray(q.scale if q is not None and q.scale is not None else [], np.float64).reshape(-1)


def set_int32_codes(model_obj, tensor, values: np.ndarray, scale: np.ndarray, users: Dict[int, int]) -> None:
    """Makes int32 ``values`` ``tensor``'s codes on ``scale`` (zero points 0). A buffer that
    other tensors read keeps its codes (the tensor gets a buffer of its own), unless it
    already holds these (a zero bias the converter shares between layers)."""
    data = np.frombuffer(np.asarray(values).astype("<i4").tobytes(), np.uint8).copy()
    old = model_obj.buffers[tensor.buffer].data
    if old is not None and np.array_equal(np.asarray(old, np.uint8), data):
        pass
    elif users.get(tensor.buffer, 0) == 1:
        model_obj.buffers[tensor.buffer].data = data  # no orphaned copy of the old codes
    else:
        tensor.buffer = new_buffer(model_obj, data)
        users[tensor.buffer] = 1
    scale = np.asarray(scale).reshape(-1)
    tensor.quantization.scale = [float(s) for s in scale]
    tensor.quantization.zeroPoint = [0] * scale.size


def opcode_index(model_obj, builtin: int, version: int) -> int:
    """The index of ``builtin``'s operator code (added when missing)."""
    for i, code in enumerate(model_obj.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode = builtin
    code.deprecatedBuiltinCode = min(builtin, schema.BuiltinOperator.PLACEHOLDER_FOR_GREATER_OP_CODES)
    code.version = version
    model_obj.operatorCodes.append(code)
    return len(model_obj.operatorCodes) - 1


def buffer_users(model_obj) -> Dict[int, int]:
    """Buffer index -> how many tensors (of all subgraphs) read it."""
    users: Dict[int, int] = {}
    for sg in model_obj.subgraphs:
        for t in sg.tensors:
            users[t.buffer] = users.get(t.buffer, 0) + 1
    return users


def new_buffer(model_obj, data: Optional[np.ndarray] = None) -> int:
    """Appends a buffer holding ``data`` (uint8) and returns its index."""
    buffer = schema.BufferT()
    buffer.data = data
    model_obj.buffers.append(buffer)
    return len(model_obj.buffers) - 1
