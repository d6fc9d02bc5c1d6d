"""Saving and loading bit-pruned models (SavedModel, h5), and the bit loss after a load.

What survives where (tf_keras 2.21, tfmot 0.8.1):

- **SavedModel** (``model.save(directory)``) and **h5** (``model.save("m.h5")``),
  loaded under :func:`tfbp.bitprune_scope`, keep weights, bitlengths, frozen
  state and activation ranges exactly (identical predictions).
- The bit loss ``λ·R`` is a model-level callable loss: after a SavedModel load it
  comes back as a traced function (it still trains, with λ in
  ``model.bit_loss.regularization``) but ``costs.get_bit_loss(model)`` is None, so
  callbacks cannot find it; h5 drops it and λ altogether. :func:`load_model`
  re-attaches a real :class:`~tf_bitpruning.costs.BitLoss` (see
  :func:`restore_bit_loss`). The weighting is not saved by either format.
- ``tf.train.Checkpoint(model=..., optimizer=...)`` restores bitlengths, ranges,
  optimizer slots and λ (dependency ``"bit_loss"``) into a model built the same way.
- The Keras v3 ``.keras`` format saves but cannot load tfmot quantize wrappers
  (their quantizer variables are tracked under two paths: "Layer 'quantize_layer'
  expected 7 variables, but received 4"); :func:`save_model` and
  :func:`load_model` refuse it with a message pointing to SavedModel.
"""

from __future__ import annotations

import os
from typing import Optional

import tf_keras as keras

from tf_bitpruning import costs
from tf_bitpruning.api import bitprune_scope

_KERAS_V3_HELP = (
    "the Keras v3 '.keras' format cannot restore tfmot quantize wrappers (their quantizer "
    "variables are tracked twice, and loading fails with \"expected 7 variables, but received "
    "4\"). Save bit-pruned models as a SavedModel directory, model.save('my_model'), or as h5, "
    "model.save('my_model.h5'), and load them with tf_bitpruning.export.load_model(path) or "
    "keras.models.load_model(path) under tfbp.bitprune_scope().")


def _is_keras_v3(path) -> bool:
    return os.fspath(path).endswith(".keras")


def save_model(model: keras.Model, path, **kwargs) -> None:
    """``model.save(path)``, refusing the ``.keras`` format that cannot be loaded back."""
    if _is_keras_v3(path):
        raise ValueError(f"save_model('{os.fspath(path)}'): {_KERAS_V3_HELP}")
    model.save(path, **kwargs)


def _restored_bit_loss(model):
    """The λ holder a SavedModel load revives as a plain object, if any."""
    restored = getattr(model, "bit_loss", None)
    if restored is not None and not isinstance(restored, costs.BitLoss) and hasattr(restored, "regularization"):
        return restored
    return None


def restore_bit_loss(model: keras.Model, regularization: Optional[float] = None,
                     weighting: str = "uniform") -> Optional[costs.BitLoss]:
    """Re-attaches the bit loss to a loaded bit-pruned model.

    Does nothing (returns the loss) when one is attached, and returns None for a
    model without learned bitlengths. λ is ``regularization`` if given, else the
    value a SavedModel kept; an h5 file keeps no λ, so pass it. The weighting is
    not saved by Keras: pass the one the model was trained with. The traced copy
    of the old loss that a SavedModel revives is removed, so the loss counts once.
    """
    existing = costs.get_bit_loss(model)
    if existing is not None:
        return existing
    if not costs.quantized_tensors(model):
        return None
    restored = _restored_bit_loss(model)
    if regularization is None:
        if restored is None:
            raise ValueError(
                f"Model '{model.name}' was loaded without its bit loss and λ (h5 does not save them): "
                f"pass regularization=λ (and weighting=...) to restore it.")
        regularization = float(restored.regularization.numpy())
    if restored is not None:
        from tensorflow.python.saved_model.function_deserialization import RestoredFunction

        model._callable_losses[:] = [
            c for c in model._callable_losses
            if not any(isinstance(a, RestoredFunction) for a in getattr(c, "args", ()))]
        delattr(model, "bit_loss")
        # Forget the revived object as checkpoint dependency "bit_loss", for the new one.
        model._self_unconditional_checkpoint_dependencies[:] = [
            ref for ref in model._self_unconditional_checkpoint_dependencies if ref.name != "bit_loss"]
        model._self_unconditional_dependency_names.pop("bit_loss", None)
    return costs.attach_bit_loss(model, float(regularization), weighting)


def load_model(path, regularization: Optional[float] = None, weighting: str = "uniform",
               compile: bool = True) -> keras.Model:
    """Loads a SavedModel directory or h5 file of a bit-pruned model and re-attaches
    its bit loss (see :func:`restore_bit_loss`; for h5, λ defaults to 0 when not
    given, so the loaded model predicts and fine-tunes but does not prune further)."""
    if _is_keras_v3(path):
        raise ValueError(f"load_model('{os.fspath(path)}'): {_KERAS_V3_HELP}")
    with bitprune_scope():
        model = keras.models.load_model(path, compile=compile)
    if regularization is None and _restored_bit_loss(model) is None:
        regularization = 0.0
    if isinstance(model, keras.Model) and costs.quantized_tensors(model):
        restore_bit_loss(model, regularization, weighting)
    return model
