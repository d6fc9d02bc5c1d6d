"""The tf_keras front end (tfmot underneath): what the shared code reads off a tf_keras
model, layer or tensor, and the few things it does to one (a variable, the bit loss).

Chosen by :func:`tf_bitpruning.frontend.frontend_for`, with the same interface
(:class:`tf_bitpruning.frontend.FrontEnd`) as the Keras 3 one,
:mod:`tf_bitpruning.keras3.frontend`. What it does to a whole model (bit-prune, freeze,
export, save) is the pipeline, :mod:`tf_bitpruning.tfkeras_pipeline`.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Dict, List

import tensorflow as tf
import tf_keras

from tf_bitpruning import _compat, attention_layers

# Why the tf_keras path refuses Keras's own ``.keras`` archive (saving and loading).
KERAS_ARCHIVE_HELP = (
    "the Keras v3 '.keras' format cannot restore tfmot quantize wrappers (their quantizer "
    "variables are tracked twice, and loading fails with \"expected 7 variables, but received "
    "4\"). Save bit-pruned models as a SavedModel directory, model.save('my_model'), or as h5, "
    "model.save('my_model.h5'), and load them with tf_bitpruning.export.load_model(path) or "
    "keras.models.load_model(path) under tfbp.bitprune_scope().")


class TfKerasFrontEnd:
    """tf_keras models: tfmot's ``QuantizeWrapperV2`` and ``QuantizeLayer`` hold the quantizers."""

    name = "tf_keras"
    model_class = tf_keras.Model
    attention_pieces = SimpleNamespace(AttentionEinsum=attention_layers.AttentionEinsum,
                                       AttentionSoftmax=attention_layers.AttentionSoftmax,
                                       Dropout=tf_keras.layers.Dropout)

    # -- the graph ---------------------------------------------------------------------------------
    make_input = staticmethod(tf_keras.Input)
    producers = staticmethod(_compat.producers)
    consumers = staticmethod(_compat.consumers)
    tensor_layer = staticmethod(_compat.tensor_layer)
    run_nodes = staticmethod(_compat.run_nodes)

    @staticmethod
    def output_shape(layer):
        """The output shape of the layer's first call (a list for several outputs)."""
        return layer.get_output_shape_at(0)

    # -- the quantizers a layer holds ------------------------------------------------------------------
    @staticmethod
    def activation_tensors(layer) -> List[tuple]:
        if isinstance(layer, _compat.QuantizeLayer):
            return [(layer.quantizer, layer.quantizer_vars)] if layer.quantizer else []
        if not isinstance(layer, _compat.QuantizeWrapper):
            return []
        return _compat.tfmot_activation_quantizers(layer)

    @staticmethod
    def weight_tensors(layer) -> List[tuple]:
        if isinstance(layer, _compat.QuantizeWrapper):
            return _compat.tfmot_weight_quantizers(layer)
        return []

    @staticmethod
    def is_input_quantizer(layer) -> bool:
        return isinstance(layer, _compat.QuantizeLayer)

    @staticmethod
    def user_layer(layer):
        return layer.layer if isinstance(layer, _compat.QuantizeWrapper) else layer

    @staticmethod
    def kernel_renames(kind: str) -> Dict[str, str]:
        """tf_keras names every kernel as the registry does."""
        return {}

    # -- what the shared code does to a model or layer --------------------------------------------------
    @staticmethod
    def add_variable(layer, name: str, shape, value: float, trainable: bool, constraint=None):
        return layer.add_weight(name, shape=shape, initializer=tf_keras.initializers.Constant(value),
                                constraint=constraint, trainable=trainable,
                                aggregation=tf.VariableAggregation.MEAN, experimental_autocast=False)

    @staticmethod
    def keep_bit_loss(model, loss: Any) -> None:
        """A callable loss of the model, and its checkpoint dependency ``"bit_loss"``."""
        _compat.track(model, loss, "bit_loss")
        model.add_loss(loss)

    @staticmethod
    def require_tfmot(what: str) -> None:
        """The tfmot-style API (annotate, apply) takes tf_keras objects."""

    @staticmethod
    def load_archive(path, compile: bool):
        raise ValueError(f"load_model('{path}'): {KERAS_ARCHIVE_HELP}")


TF_KERAS = TfKerasFrontEnd()
