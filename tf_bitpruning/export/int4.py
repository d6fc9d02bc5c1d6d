"""Flatbuffer pass: ≤ 4-bit filters stored as INT4 (two values per byte, the
first in the low nibble), and the reverse for runtimes without INT4."""

from __future__ import annotations

import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from tf_bitpruning.export import metadata as _metadata
from tf_bitpruning.export._compat import flatbuffer_utils, schema
from tf_bitpruning.export.checks import ExportError
from tf_bitpruning.export.flatbuffer import FILTER_INPUT, Matched, buffer_users
from tf_bitpruning.export.layout import is_pointwise_conv, pointwise_conv_as_fc

# Builtin ops whose filter (input 1) LiteRT 2.3 runs as INT4 with outputs identical
# to INT8 (tests/test_export.py). INT2 filters are refused. ``int4=True`` packs these.
INT4_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")

# The ops among them whose INT4 filters run as fast as INT8 ones with LiteRT's default
# resolver (XNNPACK), at 1 and 2 threads; ``int4="auto"`` packs only these. Measured with
# benchmarks/export_speed.py --per_op (MobileNetV2-224, 4-bit kernels, LiteRT 2.3, x86-64):
# FULLY_CONNECTED (per-tensor and per-channel) INT4 = INT8 latency; CONV_2D and
# DEPTHWISE_CONV_2D INT4 leave XNNPACK for a builtin kernel, 5-10x slower on the network.
# Pointwise CONV_2D filters are packed as FULLY_CONNECTED (see .layout).
FAST_INT4_OPS = ("FULLY_CONNECTED",)

Int4Mode = Union[str, bool]


def int4_ops_for(int4: Int4Mode, int4_ops: Optional[Sequence[str]] = None) -> Tuple[str, ...]:
    """The ops whose ≤ 4-bit filters are packed: ``int4="auto"`` -> :data:`FAST_INT4_OPS`,
    ``True`` -> :data:`INT4_OPS`, ``False`` -> none; ``int4_ops`` overrides the set."""
    if isinstance(int4, np.bool_):
        int4 = bool(int4)
    if int4 != "auto" and not isinstance(int4, bool):
        raise ValueError(f"int4 must be 'auto', True or False, got {int4!r}.")
    if isinstance(int4_ops, str):
        int4_ops = (int4_ops,)
    bad = sorted(set(int4_ops or ()) - set(FILTER_INPUT))
    if bad:
        raise ValueError(f"int4_ops: {bad} have no filter to pack; choose from {sorted(FILTER_INPUT)}.")
    if int4 is False:
        return ()
    return tuple(int4_ops) if int4_ops is not None else (FAST_INT4_OPS if int4 == "auto" else INT4_OPS)


def packed_as(op: Optional[str], pointwise: bool, ops: Sequence[str]) -> Optional[str]:
    """The op a ≤ 4-bit filter of ``op`` is stored under as INT4 (None: kept INT8).
    A pointwise CONV_2D becomes a FULLY_CONNECTED where that op is packed."""
    if op == "CONV_2D" and pointwise and "FULLY_CONNECTED" in ops:
        return "FULLY_CONNECTED"
    return op if op in ops else None


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


def pack_filters(model_obj, matched: Matched, bits: Dict[Tuple[str, str], int],
                 ops: Sequence[str]) -> List[Tuple[str, str]]:
    """Stores the ≤ 4-bit filters of ``ops`` as INT4 (pointwise CONV_2D ones as
    FULLY_CONNECTED, see :func:`packed_as`); updates ``matched`` with the ops'
    new names and returns the packed kernels' keys."""
    users = buffer_users(model_obj)
    packed = []
    for key, (op_name, op, tensor) in list(matched.items()):
        target = packed_as(op_name, op_name == "CONV_2D" and is_pointwise_conv(model_obj, op), ops)
        if target is None or bits[key] > 4 or users.get(tensor.buffer, 0) != 1:
            continue
        buffer = model_obj.buffers[tensor.buffer]
        values = np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(), np.int8)
        if values.size and np.abs(values.astype(np.int16)).max() > 7:
            continue  # not on a ≤4-bit grid (should not happen for a ≤4-bit tensor)
        if target != op_name:
            pointwise_conv_as_fc(model_obj, op)
            matched[key] = (target, op, tensor)
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


def litert_interpreter():
    """LiteRT's ``(Interpreter, OpResolverType)``, or None when ``ai_edge_litert`` is missing."""
    try:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType
    except ImportError:
        return None
    return Interpreter, OpResolverType


def verify_int4(int8_model: bytes, int4_model: bytes, required: bool = False) -> bool:
    """The INT4 file loads in LiteRT and gives the INT8 file's outputs (builtin kernels).

    Without LiteRT (``pip install ai-edge-litert``) nothing can be run: ``required``
    raises an :class:`ExportError`, otherwise a ``UserWarning`` says the file is
    unverified. Returns whether the files were compared.
    """
    litert = litert_interpreter()
    if litert is None:
        message = ("verify_int4: LiteRT (ai_edge_litert) is not installed, so the INT4-packed file "
                   "cannot be run against its INT8 reference. pip install ai-edge-litert (or "
                   "tf_bitpruning[litert]), or pass verify_int4=False (or int4=False) to skip the check.")
        if required:
            raise ExportError(message)
        warnings.warn(message + " The file is written unverified.", UserWarning, stacklevel=3)
        return False
    Interpreter, OpResolverType = litert
    outputs = []
    for content in (int8_model, int4_model):
        it = Interpreter(model_content=content,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        it.allocate_tensors()
        rng = np.random.default_rng(0)
        for d in it.get_input_details():
            if np.issubdtype(d["dtype"], np.integer) and not d["quantization"][0]:
                x = rng.integers(0, 1, size=d["shape"], endpoint=True)  # indices (an Embedding's)
            elif np.issubdtype(d["dtype"], np.integer):
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
    return True


