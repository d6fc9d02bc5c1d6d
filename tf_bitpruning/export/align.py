"""The Keras model onto its file's biases: :func:`align_to_tflite`.

A ``.tflite`` adds each bias (with any BatchNormalization folded into it) as an int32
on the grid ``input step × weight step``; the Keras model adds the float value. The
difference, at most half a bias step (about 1e-3 of an output step), moves an output
that lies that close to a rounding midpoint to the other side, and deep networks
(NASNet's cells, EfficientNet's squeeze-excites) amplify such one-step flips into
different logits. After :func:`align_to_tflite` the model adds what the file adds.
"""

from __future__ import annotations

import os
from typing import Dict, List, Tuple, Union

import numpy as np
import tf_keras as keras

from tf_bitpruning.export import _compat
from tf_bitpruning.export._compat import flatbuffer_utils
from tf_bitpruning.export.checks import check_frozen
from tf_bitpruning.export.metadata import text
from tf_bitpruning.export.plan import build_plan
from tf_bitpruning.pipeline import pipeline_for

_BIASED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def align_to_tflite(model: keras.Model, path: Union[str, os.PathLike]) -> Dict[str, float]:
    """Moves the biases of a frozen bit-pruned ``model`` (a folded BatchNormalization's
    offset ``beta``, where one follows) onto the int32 values its exported file at
    ``path`` adds, in place, so that Keras computes what the file computes.

    Usage (``frozen`` fine-tuned at its frozen bitlengths)::

        tfbp.export_tflite(frozen, "model.tflite", align=False)
        tfbp.align_to_tflite(frozen, "model.tflite")  # Keras now computes what the file does

    :func:`export_tflite` does this itself by default (``align=True``); call it after
    ``align=False`` or to check a file against a model. Works for tf_keras and Keras 3
    models (a Keras 3 model is matched through its export twin, whose layers carry its
    names). Exporting again adds the same biases. Returns, per moved layer, the largest
    move relative to its bias step (at most 0.5). A file of another model, or of this one
    before more training, raises and moves nothing.
    """
    check_frozen(model, "align_to_tflite")
    exported = pipeline_for(model).export_model(model)  # a Keras 3 model's tf_keras twin
    moved, moves = bias_moves(exported, flatbuffer_utils.read_model(os.fspath(path)), os.fspath(path))
    apply_moves(model, moves)
    return moved


# (inner layer name, its attribute "bias" or "beta", the value the file adds)
Move = Tuple[str, str, np.ndarray]


def bias_moves(model: keras.Model, model_obj, path: str) -> Tuple[Dict[str, float], List[Move]]:
    """What :func:`align_to_tflite` moves: ``({layer: largest move in bias steps}, moves)``
    for the tf_keras ``model`` exported as ``model_obj`` (read from ``path``, named in errors)."""
    check_frozen(model, "align_to_tflite")
    plan = build_plan(model)
    by_inner = {_compat.inner(layer).name: layer for layer in model.layers}
    users = _compat.consumers(model)
    sg = model_obj.subgraphs[0]
    moved: Dict[str, float] = {}
    moves: List[Move] = []
    for op in sg.operators:
        if flatbuffer_utils.opcode_to_name(model_obj, op.opcodeIndex) not in _BIASED_OPS \
                or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        tensor = sg.tensors[op.inputs[2]]
        scale = np.asarray(tensor.quantization.scale, np.float64)
        added = np.frombuffer(bytes(model_obj.buffers[tensor.buffer].data), np.int32) * scale
        name = text(tensor.name)
        layer = by_inner.get(name[:-len("/bias")]) if name.endswith("/bias") else None
        filter_owner = text(sg.tensors[op.inputs[1]].name).split("/")[0]
        if layer is not None and layer.name in plan.fold_into:  # conv -> BN: the BN's beta
            keras_value, bn = plan.fold_into[layer.name], _compat.inner(users[id(layer)][0])
        elif layer is not None and layer.name in plan.bias:
            keras_value, bn = plan.bias[layer.name], None
        elif filter_owner in plan.unfolded_bn:  # a BN alone, as a 1x1 depthwise conv
            layer = model.get_layer(filter_owner)
            keras_value, bn = plan.unfolded_bn[filter_owner][1], _compat.inner(layer)
        else:
            continue
        keras_value = np.asarray(keras_value, np.float64).reshape(-1)
        if added.shape != keras_value.shape:
            raise ValueError(f"align_to_tflite: '{path}' is not the export of '{model.name}' as it is now "
                             f"(layer '{layer.name}' has {keras_value.size} biases, the file {added.size}).")
        steps = np.broadcast_to(scale, added.shape)
        off = np.abs(added - keras_value) / np.maximum(steps, 1e-30)
        if off.max() > 0.5 + 1e-3:
            raise ValueError(f"align_to_tflite: '{path}' was not exported from '{model.name}' as it is now: "
                             f"layer '{layer.name}' adds biases {off.max():.1f} of their grid step away "
                             f"(export again after training, then align).")
        if bn is not None:
            if not bn.center:
                continue  # no beta to move: that layer keeps its float offset
            moves.append((bn.name, "beta",
                          (bn.beta.numpy().astype(np.float64) + (added - keras_value)).astype(np.float32)))
        else:
            inner = _compat.inner(layer)
            moves.append((inner.name, "bias", added.reshape(inner.bias.shape).astype(np.float32)))
        moved[layer.name] = float(off.max())
    return moved, moves


def apply_moves(model, moves: List[Move]) -> None:
    """Assigns :func:`bias_moves`' values to ``model``'s layers of those names (tf_keras or
    Keras 3: a wrapper's inner layer carries the name)."""
    layers = {}
    for layer in model.layers:
        inner = getattr(layer, "layer", None) if getattr(layer, "bitprune_role", None) == "wrapper" \
            else _compat.inner(layer)
        layers[(inner or layer).name] = inner or layer
    missing = sorted({name for name, _, _ in moves} - set(layers))
    if missing:
        raise ValueError(f"align_to_tflite: model '{model.name}' has no layers {missing} of its export.")
    for name, attr, value in moves:  # only once every layer matched: a refusal changes nothing
        getattr(layers[name], attr).assign(value)
