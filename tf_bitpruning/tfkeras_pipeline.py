"""The tf_keras pipeline (tfmot underneath): bit-prune, freeze, export and save a tf_keras
model. Chosen by :func:`tf_bitpruning.pipeline.pipeline_for`, with the same interface
(:class:`tf_bitpruning.pipeline.Pipeline`) as :mod:`tf_bitpruning.keras3.pipeline`."""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

import tf_keras as keras

from tf_bitpruning import _compat, costs
from tf_bitpruning.options import BitPruneOptions
from tf_bitpruning.quantizers import BitlengthQuantizer
from tf_bitpruning.tfkeras_api import bitprune_annotate_model, bitprune_apply, bitprune_scope, check_model
from tf_bitpruning.tfkeras_frontend import KERAS_ARCHIVE_HELP

# The bit-loss settings tfbp.save_model writes into an h5 file (h5 keeps no λ of its own).
H5_BIT_LOSS_ATTR = "tf_bitpruning_bit_loss"


def is_keras_archive(path) -> bool:
    """Whether ``path`` names Keras's own ``.keras`` archive."""
    return os.fspath(path).endswith(".keras")


def is_h5_file(path) -> bool:
    import h5py

    path = os.fspath(path)
    return os.path.isfile(path) and h5py.is_hdf5(path)


def _copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Copies weights layer by layer, matched by name within each layer: a bitlength
    that turns non-trainable moves in a layer's ``weights`` order (e.g. past
    BatchNormalization's moving statistics), so model-wide positions differ."""
    for src, dst in zip(source.layers, target.layers):
        by_name = {w.name.split("/")[-1]: w for w in src.weights}
        names = [w.name.split("/")[-1] for w in dst.weights]
        if len(by_name) == len(src.weights) and sorted(names) == sorted(by_name):
            for w, name in zip(dst.weights, names):
                w.assign(by_name[name])
        else:
            dst.set_weights(src.get_weights())


class TfKerasPipeline:
    """tfmot's ``quantize_apply`` with :class:`tf_bitpruning.BitPruneQuantizeScheme`, and its wrappers."""

    check_model = staticmethod(check_model)

    @staticmethod
    def bitprune(model, regularization: float, weighting: str, skip_layers: Sequence[str],
                 options: BitPruneOptions) -> keras.Model:
        annotated = bitprune_annotate_model(model, skip_layers=skip_layers)
        return bitprune_apply(annotated, regularization, weighting, **options.as_dict())

    @staticmethod
    def clone_frozen(model, freeze_config: Callable[[Any, str], Any],
                     freeze_quantizer: Callable[[Any, str], Any]) -> keras.Model:
        def clone(layer):
            if isinstance(layer, _compat.QuantizeWrapper):
                inner = layer.layer.__class__.from_config(layer.layer.get_config())
                return _compat.QuantizeWrapperV2(inner, freeze_config(layer.quantize_config, layer.name),
                                                 name=layer.name)
            if isinstance(layer, _compat.QuantizeLayer) and isinstance(layer.quantizer, BitlengthQuantizer):
                return _compat.QuantizeLayer(freeze_quantizer(layer.quantizer, layer.name), name=layer.name)
            return layer.__class__.from_config(layer.get_config())

        with bitprune_scope():
            frozen = keras.models.clone_model(model, clone_function=clone)
        _compat.keep_frozen(frozen)
        _copy_weights(model, frozen)
        return frozen

    @staticmethod
    def export_model(model) -> keras.Model:
        return model


    @staticmethod
    def save(model, path, **kwargs) -> None:
        """``model.save(path)`` (SavedModel or h5; an h5 file also gets the bit loss's λ,
        weighting and kind), refusing the ``.keras`` archive that cannot be loaded back."""
        if is_keras_archive(path):
            raise ValueError(f"save_model('{os.fspath(path)}'): {KERAS_ARCHIVE_HELP}")
        model.save(path, **kwargs)
        bit_loss = costs.get_bit_loss(model)
        if bit_loss is not None and is_h5_file(path):
            import h5py

            record = {"regularization": float(bit_loss.regularization.numpy()),
                      "weighting": bit_loss.weighting, "kind": bit_loss.kind}
            with h5py.File(os.fspath(path), "a") as f:
                f.attrs[H5_BIT_LOSS_ATTR] = json.dumps(record)


TF_KERAS_PIPELINE = TfKerasPipeline()
