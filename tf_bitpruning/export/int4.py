"""Flatbuffer pass: ≤ 4-bit filters stored as INT4 (two values per byte, the
first in the low nibble), and the reverse for runtimes without INT4."""

from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

from tf_bitpruning.export import metadata as _metadata
from tf_bitpruning.export._compat import flatbuffer_utils, schema
from tf_bitpruning.export.checks import ExportError
from tf_bitpruning.export.flatbuffer import Matched

# Builtin ops whose filter (input 1) LiteRT 2.3 runs as INT4 with outputs identical
# to INT8 (measured, tests/test_export.py). INT2 filters are refused.
INT4_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def pack_int4_values(values: np.ndarray) -> np.ndarray:
    """Packs int8 values in [-8, 7] two per byte, the first in the low nibble."""
    v = np.asarray(values, np.int8).reshape(-1)
    if v.size and (v.min() < -8 or v.max() > 7):
        raise ValueError(f"INT4 holds values in [-8, 7], got [{v.min()}, {v.max()}].")
    nibbles = (v.astype(np.int16) & 0xF).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def unpack_int4_values(packed: np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`pack_int4_values`."""
    p = np.asarray(packed, np.uint8)
    nibbles = np.stack([p & 0xF, p >> 4], axis=1).reshape(-1)[:count].astype(np.int16)
    return np.where(nibbles > 7, nibbles - 16, nibbles).astype(np.int8)


def pack_filters(model_obj, matched: Matched, bits: Dict[Tuple[str, str], int], ops: Sequence[str]) -> List[Tuple[str, str]]:
    """Stores the filters of ``ops`` at ≤ 4 bits as INT4; returns the packed kernels' keys."""
    buffer_users: Dict[int, int] = {}
    for sg in model_obj.subgraphs:
        for t in sg.tensors:
            buffer_users[t.buffer] = buffer_users.get(t.buffer, 0) + 1
    packed = []
    for key, (op_name, _, tensor) in matched.items():
        if op_name not in ops or bits[key] > 4 or buffer_users.get(tensor.buffer, 0) != 1:
            continue
        buffer = model_obj.buffers[tensor.buffer]
        values = np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(), np.int8)
        if values.size and np.abs(values.astype(np.int16)).max() > 7:
            continue  # not on a ≤4-bit grid (should not happen for a ≤4-bit tensor)
        buffer.data = pack_int4_values(values)
        tensor.type = schema.TensorType.INT4
        packed.append(key)
    return packed


def unpack_int4(path: _metadata.PathLike, out_path: _metadata.PathLike) -> int:
    """Rewrites every INT4 tensor of a ``.tflite`` file as INT8 (for runtimes without
    INT4); the metadata is kept. Returns the number of tensors rewritten."""
    model_obj = flatbuffer_utils.read_model(os.fspath(path))
    count = 0
    for sg in model_obj.subgraphs:
        for t in sg.tensors:
            if t.type == schema.TensorType.INT4 and t.buffer and model_obj.buffers[t.buffer].data is not None:
                buffer = model_obj.buffers[t.buffer]
                values = unpack_int4_values(np.asarray(buffer.data, np.uint8), int(np.prod(t.shape)))
                buffer.data = values.view(np.uint8).copy()
                t.type = schema.TensorType.INT8
                count += 1
    flatbuffer_utils.write_model(model_obj, os.fspath(out_path))
    return count


def verify_int4(int8_model: bytes, int4_model: bytes) -> None:
    """The INT4 file loads in LiteRT and gives the INT8 file's outputs (builtin kernels)."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:  # LiteRT is optional; the tests check this too
        return
    outputs = []
    for content in (int8_model, int4_model):
        it = Interpreter(model_content=content,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        it.allocate_tensors()
        rng = np.random.default_rng(0)
        for d in it.get_input_details():
            if np.issubdtype(d["dtype"], np.integer):
                info = np.iinfo(d["dtype"])
                x = rng.integers(info.min, info.max, size=d["shape"], endpoint=True)
            else:
                x = rng.uniform(0.0, 1.0, size=d["shape"])
            it.set_tensor(d["index"], x.astype(d["dtype"]))
        it.invoke()
        outputs.append([it.get_tensor(d["index"]) for d in it.get_output_details()])
    if not all(np.array_equal(a, b) for a, b in zip(*outputs)):
        raise ExportError("the INT4-packed model does not reproduce the INT8 model's outputs; "
                          "export with int4=False.")


