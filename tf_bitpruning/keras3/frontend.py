"""The Keras 3 front end: what the shared code reads off a Keras 3 model, layer or
tensor, and the few things it does to one (a variable, the bit loss).

The same interface (:class:`tf_bitpruning.frontend.FrontEnd`) as the tf_keras one,
:mod:`tf_bitpruning.tfkeras_frontend`; chosen by :func:`tf_bitpruning.frontend.frontend_for`.
It imports no other module of the package that imports the shared core (the core
asks it), so our layers (:mod:`.layers`) are recognized by their ``bitprune_role``.
What it does to a whole model is the pipeline, :mod:`tf_bitpruning.keras3.pipeline`.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import keras

from tf_bitpruning.keras3 import _compat, attention_layers
from tf_bitpruning.layer_kinds import KERAS3_KERNEL_ATTRS

TFMOT_API_HELP = (
    "this is a Keras 3 object, and the tfmot-style annotate/apply API is tf_keras only (tfmot "
    "does not support Keras 3). Under Keras 3 call tfbp.bitprune_model(model, skip_layers=[...]) "
    "directly, or build the model with `import tf_keras as keras`.")


def _role(layer) -> Optional[str]:
    """What a layer of ours is: its class's ``bitprune_role``, ``"wrapper"`` or ``"input"``;
    None for any other layer."""
    return getattr(type(layer), "bitprune_role", None)


class Keras3FrontEnd:
    """Keras 3 models: our ``BitPruneWrapper`` and ``BitPruneInputQuantizer`` hold the quantizers."""

    name = "keras3"
    model_class = keras.Model
    attention_pieces = SimpleNamespace(AttentionEinsum=attention_layers.AttentionEinsum,
                                       AttentionSoftmax=attention_layers.AttentionSoftmax,
                                       Dropout=keras.layers.Dropout)

    # -- the graph ---------------------------------------------------------------------------------
    make_input = staticmethod(keras.Input)
    producers = staticmethod(_compat.producers)
    consumers = staticmethod(_compat.consumers)
    tensor_layer = staticmethod(_compat.tensor_layer)
    run_nodes = staticmethod(_compat.run_nodes)

    @staticmethod
    def output_shape(layer):
        return tuple(layer.output.shape)

    # -- the quantizers a layer holds ------------------------------------------------------------------
    @staticmethod
    def activation_tensors(layer) -> List[tuple]:
        return list(getattr(layer, "activation_quantizers", []) or [])

    @staticmethod
    def weight_tensors(layer) -> List[tuple]:
        return layer.weight_quantizers if _role(layer) == "wrapper" else []

    @staticmethod
    def is_input_quantizer(layer) -> bool:
        return _role(layer) == "input"

    @staticmethod
    def user_layer(layer):
        return layer.layer if _role(layer) == "wrapper" else layer

    @staticmethod
    def kernel_renames(kind: str) -> Dict[str, str]:
        """Keras 3's names of the kernels the registry names after tf_keras."""
        return KERAS3_KERNEL_ATTRS.get(kind, {})

    # -- what the shared code does to a model or layer --------------------------------------------------
    @staticmethod
    def add_variable(layer, name: str, shape, value: float, trainable: bool, constraint=None):
        return layer.add_weight(name=name, shape=shape, initializer=keras.initializers.Constant(value),
                                trainable=trainable, constraint=constraint, aggregation="mean",
                                autocast=False)

    @staticmethod
    def keep_bit_loss(model, loss: Any) -> None:
        """Nothing to do: a ``BitPrunedModel``'s ``losses`` adds it, its save keeps its variables."""

    @staticmethod
    def require_tfmot(what: str) -> None:
        raise TypeError(f"{what}: {TFMOT_API_HELP}")

    @staticmethod
    def load_archive(path, compile: bool):
        return keras.saving.load_model(path, compile=compile)


KERAS3 = Keras3FrontEnd()
