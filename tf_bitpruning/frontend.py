"""Which Keras an object belongs to, asked in one place: the front end of each Keras.

tf_bitpruning runs tf_keras models (through tfmot) and Keras 3 models (through its own
wrapper). The shared code (the inventory, the quantizers, the registry, flattening, the
report, the layout rules) never asks which Keras it holds: it asks the object's front
end, :func:`frontend_for`, for what differs (:class:`FrontEnd`). The front ends are
:mod:`tf_bitpruning.tfkeras_frontend` and :mod:`tf_bitpruning.keras3.frontend` (loaded
only when a Keras 3 object shows up). What each Keras does to a whole model (bit-prune,
freeze, export, save) is its pipeline, :func:`tf_bitpruning.pipeline.pipeline_for`.
"""

from __future__ import annotations

import json
import os
import zipfile
from typing import Any, Callable, Dict, List, Optional, Protocol, runtime_checkable

from tf_bitpruning.tfkeras_frontend import TF_KERAS


@runtime_checkable
class FrontEnd(Protocol):
    """What differs between the Kerases, for the shared code."""

    name: str           # "tf_keras" or "keras3"
    model_class: type   # the Keras's ``Model``
    attention_pieces: Any  # its AttentionEinsum, AttentionSoftmax and Dropout classes (attention.py)

    def make_input(self, *, batch_shape, dtype, name: str) -> Any:
        """A new model input (``keras.Input``)."""

    def output_shape(self, layer) -> Any:
        """The shape of the layer's (first call's) output."""

    def producers(self, layer, node_index: int = 0) -> List[Any]:
        """The layers feeding ``layer``'s call ``node_index`` (empty at a model input)."""

    def consumers(self, layer) -> List[Any]:
        """The layers that take ``layer``'s output, one per call."""

    def tensor_layer(self, x) -> Any:
        """The layer that computed a model tensor ``x`` (a model input's input layer)."""

    def run_nodes(self, model, inputs: List[Any], call: Callable) -> List[Any]:
        """Re-runs a functional model's graph with ``call(layer, args, kwargs)`` per layer call."""

    def activation_tensors(self, layer) -> List[tuple]:
        """``(quantizer, variables)`` of the activation quantizers ``layer`` owns."""

    def weight_tensors(self, layer) -> List[tuple]:
        """``(weight, quantizer, variables, attribute)`` of the kernels ``layer`` quantizes."""

    def is_input_quantizer(self, layer) -> bool:
        """Whether ``layer`` quantizes a model input."""

    def user_layer(self, layer) -> Any:
        """The user's layer inside a wrapper, or ``layer`` itself."""

    def kernel_renames(self, kind: str) -> Dict[str, str]:
        """``{registry's kernel attribute: this Keras's}`` for a layer kind."""

    def add_variable(self, layer, name: str, shape, value: float, trainable: bool, constraint=None) -> Any:
        """A float32 variable of ``layer`` that mixed precision never casts, averaged across replicas."""

    def keep_bit_loss(self, model, loss) -> None:
        """Makes the (already set) ``model._bitprune_loss`` part of ``model.losses`` and its checkpoints."""

    def require_tfmot(self, what: str) -> None:
        """Raises unless the tfmot-style API (annotate, apply) takes this Keras's objects."""

    def load_archive(self, path, compile: bool) -> Any:
        """Loads a ``.keras`` archive this Keras wrote (or raises why it cannot)."""


def _is_keras3(obj: Any) -> bool:
    """Whether ``obj`` (a model, layer or tensor) belongs to Keras 3 (``import keras``)."""
    for cls in type(obj).__mro__:
        top = cls.__module__.split(".")[0]
        if top == "keras":
            return True
        if top == "tf_keras":
            return False
    return False


def _keras3() -> FrontEnd:
    from tf_bitpruning.keras3.frontend import KERAS3
    return KERAS3


def frontend_for(obj: Any) -> FrontEnd:
    """The front end of the Keras that ``obj`` (a model, layer or tensor) belongs to."""
    return _keras3() if _is_keras3(obj) else TF_KERAS


def frontend_for_archive(path) -> FrontEnd:
    """The front end of the Keras that wrote the ``.keras`` archive at ``path`` (tf_keras,
    which cannot load it back, for anything but Keras 3's)."""
    try:
        with zipfile.ZipFile(os.fspath(path)) as archive:
            version = str(json.loads(archive.read("metadata.json")).get("keras_version", ""))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return TF_KERAS
    return _keras3() if version.startswith("3") else TF_KERAS


# -- the graph questions the shared code asks most, for any Keras ----------------------------------------

def producers(layer, node_index: int = 0) -> List[Any]:
    """The layers feeding ``layer``'s call ``node_index`` (empty at a model input)."""
    return frontend_for(layer).producers(layer, node_index)


def producer(layer) -> Optional[Any]:
    """The layer feeding ``layer``'s (first) input, or None at a model input."""
    found = producers(layer)
    return found[0] if found else None


def consumers(layer) -> List[Any]:
    """The layers that take ``layer``'s output, one per call."""
    return frontend_for(layer).consumers(layer)
