"""The learned precision of every tensor, stored in a ``.tflite`` flatbuffer.

:func:`tf_bitpruning.export.export_tflite` writes one metadata entry named
``"tf_bitpruning.precision"`` holding UTF-8 JSON::

    {"format": 1, "tool": "tf_bitpruning", "version": "0.1.0", "model": "sequential",
     "average_bits": {"all": 4.1, "weights": 3.7, "activations": 4.4},
     "layers": {"conv2d": {"weights": 3, "activations": 4}, ...},
     "tensors": [{"name": "conv2d/weights", "layer": "conv2d", "kind": "weights",
                  "bits": 3, "elements": 144, "storage": "int4",
                  "tflite_tensor": "..."}, ...]}

``storage`` is the container the tensor has in the file (``int4`` or ``int8``);
``bits`` the learned bitlength (the grid the values lie on). Per-channel
bitlengths add ``"bits_per_channel"`` and report their mean as ``bits``.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Union

import numpy as np
from tf_bitpruning.export._compat import flatbuffer_utils, schema

METADATA_NAME = "tf_bitpruning.precision"
FORMAT_VERSION = 1
_TFLITE_IDENTIFIER = b"TFL3"

PathLike = Union[str, "os.PathLike[str]"]


class PrecisionMetadataError(ValueError):
    """A file is not a TFLite model, or has no tf_bitpruning precision metadata."""


def set_metadata(model_obj: "schema.ModelT", name: str, data: bytes) -> None:
    """Adds (or replaces) the metadata entry ``name`` of a flatbuffer model object
    (from ``flatbuffer_utils.read_model``) with the bytes ``data``."""
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, dtype=np.uint8).copy()
    entries = list(model_obj.metadata or [])
    for entry in entries:
        if entry.name is not None and _name_bytes(entry.name) == name.encode("utf-8"):
            model_obj.buffers[entry.buffer] = buffer
            return
    model_obj.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model_obj.buffers) - 1
    entries.append(entry)
    model_obj.metadata = entries


def get_metadata(model_obj: "schema.ModelT", name: str) -> Union[bytes, None]:
    """The bytes of metadata entry ``name``, or None.

    Raises:
      PrecisionMetadataError: the entry points at a buffer the model does not have.
    """
    wanted = name.encode("utf-8")
    for entry in model_obj.metadata or []:
        # Compared as bytes: a damaged name that is not UTF-8 is simply another name.
        if entry.name is None or _name_bytes(entry.name) != wanted:
            continue
        buffers = model_obj.buffers or []
        if not isinstance(entry.buffer, int) or not 0 <= entry.buffer < len(buffers):
            raise PrecisionMetadataError(
                f"the '{name}' metadata entry points at buffer {entry.buffer}, but the model has "
                f"{len(buffers)} buffers")
        data = buffers[entry.buffer].data
        return b"" if data is None else bytes(np.asarray(data, dtype=np.uint8).tobytes())
    return None


def _name_bytes(name) -> bytes:
    return bytes(name) if isinstance(name, (bytes, bytearray)) else str(name).encode("utf-8")


def text(name) -> str:
    """A flatbuffer string (a tensor's name: bytes) as text."""
    return name.decode("utf-8", "replace") if isinstance(name, (bytes, bytearray)) else str(name)


def _read_model(path: PathLike) -> "schema.ModelT":
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such file: '{path}'.")
    with open(path, "rb") as f:
        content = f.read()
    if len(content) < 8 or content[4:8] != _TFLITE_IDENTIFIER:
        raise PrecisionMetadataError(
            f"'{path}' is not a TFLite model (no '{_TFLITE_IDENTIFIER.decode()}' flatbuffer identifier). "
            f"Pass the .tflite file written by tfbp.export_tflite.")
    try:
        return flatbuffer_utils.read_model_from_bytearray(bytearray(content))
    except Exception as e:  # a damaged flatbuffer raises anything
        raise PrecisionMetadataError(f"'{path}' is not a readable TFLite model: {e}") from e


def read_metadata(path: PathLike) -> Dict[str, Any]:
    """The full precision JSON that :func:`export_tflite` wrote into ``path``.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      PrecisionMetadataError: ``path`` is not a TFLite file, is damaged, or has no
        valid ``tf_bitpruning.precision`` entry (any damage of the file raises this).
    """
    model_obj = _read_model(path)
    try:
        data = get_metadata(model_obj, METADATA_NAME)
    except PrecisionMetadataError as e:
        raise PrecisionMetadataError(f"'{os.fspath(path)}' is a damaged TFLite model: {e}.") from e
    if data is None:
        raise PrecisionMetadataError(
            f"'{os.fspath(path)}' is a TFLite model without '{METADATA_NAME}' metadata: it was not "
            f"written by tfbp.export_tflite. Export the frozen bit-pruned model with "
            f"tfbp.export_tflite(model, path) to get the per-layer precision.")
    try:
        info = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise PrecisionMetadataError(f"'{os.fspath(path)}': the '{METADATA_NAME}' entry is not "
                                     f"valid JSON ({e}).") from e
    problem = _layers_problem(info)
    if problem:
        raise PrecisionMetadataError(f"'{os.fspath(path)}': the '{METADATA_NAME}' entry is damaged: "
                                     f"{problem}.")
    return info


def _layers_problem(info: Any) -> Union[str, None]:
    """What is wrong with the shape of the metadata JSON, or None: it must be an object
    whose ``"layers"`` maps layer names to ``{tensor: bits}`` with numeric bits."""
    if not isinstance(info, dict):
        return f"expected a JSON object, got {type(info).__name__}"
    layers = info.get("layers")
    if not isinstance(layers, dict):
        return "no 'layers' object"
    for layer, entry in layers.items():
        if not isinstance(entry, dict):
            return f"layer '{layer}' maps to {type(entry).__name__}, not an object"
        for key, bits in entry.items():
            if isinstance(bits, bool) or not isinstance(bits, (int, float)):
                return f"'{layer}/{key}' has bits {bits!r}, not a number"
    return None


def read_precision(path: PathLike) -> Dict[str, Dict[str, Union[int, float]]]:
    """The learned bitlength of every tensor of a ``.tflite`` file, per layer::

        >>> read_precision("model.tflite")  # doctest: +SKIP
        {"conv2d": {"weights": 3, "activations": 4}, "dense": {"weights": 4, ...}}

    Use :func:`read_metadata` for the full JSON (element counts, storage, version).
    """
    return read_metadata(path)["layers"]


def precision_table(info: Dict[str, Any]) -> str:
    """A printable per-layer table of the metadata: learned weight and activation
    bits, parameters and how the weights are stored."""
    layers: Dict[str, Dict[str, list]] = {}
    for t in info["tensors"]:
        row = layers.setdefault(t["layer"], {"w": [], "a": [], "n": [], "s": []})
        if t["kind"] == "weights":
            row["w"].append(f"{t['bits']:g}")
            row["n"].append(str(t["elements"]))
            row["s"].append(t.get("storage", "int8"))
        else:
            row["a"].append(f"{t['bits']:g}")
    rows = [("layer", "weight bits", "activation bits", "params", "storage")]
    for name, row in layers.items():
        rows.append((name, "/".join(row["w"]) or "-", "/".join(row["a"]) or "-",
                     "/".join(row["n"]) or "-", "/".join(row["s"]) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]

    def fmt(value):
        return "-" if value is None else f"{value:.2f}"

    avg = info.get("average_bits", {})
    lines.append(f"average bits: {fmt(avg.get('all'))} (weights {fmt(avg.get('weights'))}, "
                 f"activations {fmt(avg.get('activations'))}); {info.get('tool', '?')} "
                 f"{info.get('version', '?')}")
    return "\n".join(lines)
