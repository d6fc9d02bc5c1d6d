"""Flatbuffer pass: short, readable tensor names."""

from __future__ import annotations

from typing import Dict

from tf_bitpruning.export import metadata as _metadata
from tf_bitpruning.export.flatbuffer import FILTER_INPUT, TABLE_INPUT, Matched


def rename_tensors(model_obj, matched: Matched, layer_names: Dict[str, str]) -> None:
    """Short, unique tensor names: ``<layer>/kernel`` and ``<layer>/bias`` for the
    filters and biases of exported kernels (``<layer>/embeddings`` for a table), the first of the converter's fused
    ``a;b;c`` names elsewhere."""
    sg = model_obj.subgraphs[0]
    wanted: Dict[int, str] = {}
    for key, (op_name, op, _) in matched.items():
        wanted[int(op.inputs[TABLE_INPUT.get(op_name, 1)])] = f"{layer_names[key[0]]}/{key[1]}"
        if op_name in FILTER_INPUT and len(op.inputs) > 2 and op.inputs[2] >= 0:
            wanted[int(op.inputs[2])] = f"{layer_names[key[0]]}/bias"
    used = set()
    for i, t in enumerate(sg.tensors):
        name = wanted.get(i) or _metadata.text(t.name).split(";")[0]
        if _metadata.text(t.name).endswith("/refined") and not name.endswith("/refined"):
            name += "/refined"
        unique, n = name, 1
        while unique in used:
            unique, n = f"{name}_{n}", n + 1
        used.add(unique)
        t.name = unique
