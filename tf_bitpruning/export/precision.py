"""Flatbuffer pass: the learned precision of every tensor as metadata
(``tf_bitpruning.precision``, read back by :mod:`.metadata`)."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import tf_keras as keras

from tf_bitpruning import costs
from tf_bitpruning._version import __version__
from tf_bitpruning.layer_kinds import FIXED_GRID_LAYERS
from tf_bitpruning.export import metadata as _metadata
from tf_bitpruning.export.grids import int_bits


def precision_info(model: keras.Model, tensors: List[costs.QuantizedTensor],
                   storage: Dict[str, Dict[str, Any]], calibrated: Sequence[Tuple[str, str]] = (),
                   float_layers: Sequence[str] = ()) -> Dict[str, Any]:
    """The metadata JSON: every tensor's bits, elements and storage; per-layer bits; averages;
    and the layers the converter calibrated at 8 bits: the inner tensors of ``calibrated``
    ((name, which tensors): LayerNormalization's statistics), all of ``float_layers`` (left in float)."""
    entries, layers = [], {}
    for t in tensors:
        bits = int_bits(t.quantizer, t.variables)
        entry = {"name": t.name, "layer": t.layer, "kind": t.kind,
                 "bits": int(bits.reshape(-1)[0]) if np.all(bits == bits.reshape(-1)[0]) else round(float(bits.mean()), 4),
                 "elements": int(t.elements)}
        if bits.size > 1 and not np.all(bits == bits.reshape(-1)[0]):
            entry["bits_per_channel"] = [int(b) for b in bits.reshape(-1)]
        if t.kind == "weights":
            entry.update(storage.get(t.name, {"storage": "int8", "tflite_tensor": None}))
        else:
            entry["storage"] = "int8"
        entries.append(entry)
        layers.setdefault(t.layer, {})[t.name.split("/", 1)[1]] = entry["bits"]

    def average(kind):
        chosen = [t for t in tensors if kind is None or t.kind == kind]
        return round(float(costs.average_bits_tensor(chosen)), 4) if chosen else None

    info = {"format": _metadata.FORMAT_VERSION, "tool": "tf_bitpruning",
            "version": __version__, "model": model.name,
            "average_bits": {"all": average(None), "weights": average("weights"),
                             "activations": average("activations")},
            "layers": layers, "tensors": entries}
    # Tensors no learned quantizer covers (a LayerNormalization's statistics, a float layer's).
    entries = list(calibrated) + [(name, "all") for name in float_layers]
    calibrated = [{"layer": name, "tensors": what, "bits": 8, "source": "representative_dataset"}
                  for name, what in entries]
    # Tensors on a grid TFLite fixes (an attention's softmax output: step 1/256), which Keras reproduces.
    users = [costs.user_layer(layer) for layer in model.layers]
    calibrated += [{"layer": user.name, "tensors": FIXED_GRID_LAYERS[type(user).__name__], "bits": 8,
                    "source": "fixed"} for user in users if type(user).__name__ in FIXED_GRID_LAYERS]
    if calibrated:
        info["calibrated"] = calibrated
    return info




def write_precision(model_obj, info: Dict[str, Any]) -> None:
    """Stores ``info`` (from :func:`precision_info`) as the file's metadata entry."""
    _metadata.set_metadata(model_obj, _metadata.METADATA_NAME,
                           json.dumps(info, separators=(",", ":")).encode("utf-8"))


def int_or_list(values: np.ndarray):
    """One int when all values agree, else the list (for ``code_multiplier``)."""
    flat = np.asarray(values).reshape(-1)
    return int(flat[0]) if np.all(flat == flat[0]) else [int(v) for v in flat]
