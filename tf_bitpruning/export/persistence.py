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
  :func:`restore_bit_loss`). The bit loss's weighting and kind are saved as the
  codes of its ``objective`` variable (SavedModel, checkpoints); :func:`save_model`
  writes λ, weighting and kind into an h5 file's attributes.
- ``tf.train.Checkpoint(model=..., optimizer=...)`` restores bitlengths, ranges,
  optimizer slots, λ, the objective and ``BitBudget``'s state (dependency
  ``"bit_loss"``) into a model built the same way; so does ``BackupAndRestore``.
- The Keras v3 ``.keras`` format saves but cannot load tfmot quantize wrappers
  (their quantizer variables are tracked under two paths: "Layer 'quantize_layer'
  expected 7 variables, but received 4"); :func:`save_model` and
  :func:`load_model` refuse it for tf_keras models with a message pointing to SavedModel.
- **Keras 3** bit-pruned models save in Keras 3's own ``.keras`` format, which keeps
  everything, the bit loss's λ, weighting, kind and annealing state included
  (``BitPrunedModel``'s config and own variables): ``model.save("m.keras")`` and
  ``keras.saving.load_model`` round-trip it exactly; :func:`save_model` and
  :func:`load_model` do the same, :func:`save_model` atomically.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Dict, Optional

import tf_keras as keras

from tf_bitpruning import _compat, costs
from tf_bitpruning.frontend import frontend_for_archive
from tf_bitpruning.pipeline import pipeline_for
from tf_bitpruning.tfkeras_api import bitprune_scope
from tf_bitpruning.tfkeras_pipeline import H5_BIT_LOSS_ATTR, is_h5_file, is_keras_archive

# restore_bit_loss / load_model: kind=SAVED takes the saved kind (kind=None means all tensors).
SAVED = "saved"


def save_model(model: keras.Model, path, **kwargs) -> None:
    """``model.save(path)``, refusing a format that cannot be loaded back (tf_keras: the
    ``.keras`` archive; Keras 3: anything but it).

    An h5 file also gets the bit loss's λ, weighting and kind (a SavedModel keeps them
    by itself), which :func:`load_model` restores."""
    pipeline_for(model).save(model, path, **kwargs)


def _load_archive(path, regularization, weighting, kind, compile: bool):
    """A ``.keras`` archive, loaded by the Keras that wrote it (tf_keras refuses it)."""
    model = frontend_for_archive(path).load_archive(os.fspath(path), compile)
    existing = costs.get_bit_loss(model)
    if existing is not None:
        _restore(model, None, weighting, kind, {})  # an explicit weighting/kind must agree
        if regularization is not None:
            costs.check_regularization(regularization)
            existing.regularization.assign(float(regularization))
    return model


def _restored_bit_loss(model):
    """The λ holder a SavedModel load revives as a plain object, if any."""
    restored = getattr(model, "bit_loss", None)
    if restored is not None and not isinstance(restored, costs.BitLoss) and hasattr(restored, "regularization"):
        return restored
    return None


def _saved_settings(model: keras.Model) -> Dict[str, object]:
    """What a SavedModel kept of the bit loss: ``regularization``, and ``weighting`` and
    ``kind`` when it was saved by a tf_bitpruning that saves them."""
    restored = _restored_bit_loss(model)
    if restored is None:
        return {}
    settings: Dict[str, object] = {"regularization": float(restored.regularization.numpy())}
    codes = getattr(restored, "objective", None)
    if codes is not None:
        settings["weighting"], settings["kind"] = costs.objective_from_codes(codes.numpy())
    return settings


def _h5_settings(path) -> Dict[str, object]:
    """The bit-loss settings :func:`save_model` wrote into an h5 file ({} if none)."""
    import h5py

    with h5py.File(os.fspath(path), "r") as f:
        raw = f.attrs.get(H5_BIT_LOSS_ATTR)
    if raw is None:
        return {}
    record = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    costs.objective_codes(record["weighting"], record["kind"])  # validates both
    return {k: record[k] for k in ("regularization", "weighting", "kind")}


def _resolve(model: keras.Model, name: str, given, unset, saved: Dict[str, object], default):
    """The saved value when ``given`` is ``unset``; ``given`` when it agrees or nothing was saved."""
    if given == unset:
        return saved.get(name, default)
    if name in saved and saved[name] != given:
        raise ValueError(
            f"Model '{model.name}' was saved with a bit loss of {name}={saved[name]!r}, but {name}={given!r} "
            f"was given: training it on would silently optimize another objective. Omit {name}= to "
            f"continue with the saved one; to change it on purpose, set it after loading "
            f"(tf_bitpruning.costs.get_bit_loss(model).{name} = {given!r}) or train with "
            f"tfbp.BitBudget({name}={given!r}).")
    return given


def restore_bit_loss(model: keras.Model, regularization: Optional[float] = None,
                     weighting: Optional[str] = None, kind: Optional[str] = SAVED) -> Optional[costs.BitLoss]:
    """Re-attaches the bit loss to a loaded bit-pruned model.

    λ is ``regularization`` if given, else the value the model kept (a SavedModel;
    an h5 file only through :func:`load_model` of a file written by :func:`save_model`).
    ``weighting=None`` and ``kind=SAVED`` (the defaults) take what was saved, or
    ``"uniform"`` and all tensors for a model saved without them (before tf_bitpruning
    saved them); an explicit value that disagrees with the saved one is a
    ``ValueError`` (``kind=None`` means all tensors, as everywhere else).
    A model with a bit loss attached keeps it (the same check applies); a model
    without learned bitlengths gets None. The traced copy of the old loss that a
    SavedModel revives is removed, so the loss counts once.
    """
    return _restore(model, regularization, weighting, kind, _saved_settings(model))


def _restore(model, regularization, weighting, kind, saved: Dict[str, object]):
    existing = costs.get_bit_loss(model)
    if existing is not None:
        current = {"weighting": existing.weighting, "kind": existing.kind}
        _resolve(model, "weighting", weighting, None, current, "uniform")
        _resolve(model, "kind", kind, SAVED, current, None)
        return existing
    if not costs.quantized_tensors(model):
        return None
    restored = _restored_bit_loss(model)
    weighting = _resolve(model, "weighting", weighting, None, saved, "uniform")
    kind = _resolve(model, "kind", kind, SAVED, saved, None)
    if regularization is None:
        if "regularization" not in saved:
            raise ValueError(
                f"Model '{model.name}' was loaded without its bit loss and λ (h5 written by model.save "
                f"does not keep them; tfbp.save_model does): pass regularization=λ (and weighting=...) "
                f"to restore it.")
        regularization = saved["regularization"]
    if restored is not None:
        _compat.drop_restored_losses(model)
        delattr(model, "bit_loss")
        # Forget the revived object as checkpoint dependency "bit_loss", for the new one.
        _compat.untrack(model, "bit_loss")
    loss = costs.attach_bit_loss(model, float(regularization), weighting)
    loss.kind = kind
    return loss


def load_model(path, regularization: Optional[float] = None, weighting: Optional[str] = None,
               kind: Optional[str] = SAVED, compile: bool = True) -> keras.Model:
    """Loads a SavedModel directory or h5 file of a bit-pruned tf_keras model and
    re-attaches its bit loss with the saved λ, weighting and kind (see
    :func:`restore_bit_loss`); or a Keras 3 ``.keras`` file (which keeps all of them;
    ``regularization`` then replaces the saved λ).

    An h5 file that :func:`save_model` did not write keeps none of them: λ defaults
    to 0 (the model predicts and fine-tunes but does not prune further) and the
    weighting to ``"uniform"``, with a warning unless ``regularization`` or
    ``weighting`` is given."""
    if is_keras_archive(path):
        return _load_archive(path, regularization, weighting, kind, compile)
    with bitprune_scope():
        model = keras.models.load_model(path, compile=compile)
    if not (isinstance(model, keras.Model) and costs.quantized_tensors(model)):
        return model
    saved = _h5_settings(path) if is_h5_file(path) else _saved_settings(model)
    if "weighting" not in saved and regularization is None and weighting is None:
        warnings.warn(
            f"load_model('{os.fspath(path)}'): the file keeps no bit-loss settings (an h5 file written by "
            f"model.save, or a model saved before tf_bitpruning kept them): continuing with "
            f"λ={saved.get('regularization', 0.0)} and weighting='uniform'. Pass regularization= and "
            f"weighting= if the model was trained otherwise; save with tfbp.save_model to keep them.",
            stacklevel=2)
    if regularization is None and "regularization" not in saved:
        regularization = 0.0
    _restore(model, regularization, weighting, kind, saved)
    return model
