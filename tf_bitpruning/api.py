"""The public entry points: ``bitprune_model`` for a tf_keras or Keras 3 model, and the
tfmot-style ones of the tf_keras front end (annotate, apply, scope; :mod:`.tfkeras_api`)."""

from __future__ import annotations

from typing import Sequence

import tf_keras as keras

from tf_bitpruning import costs
from tf_bitpruning.options import BitPruneOptions
from tf_bitpruning.pipeline import pipeline_for
from tf_bitpruning.tfkeras_api import (QuantizeWrapperV2, bitprune_annotate_layer, bitprune_annotate_model,
                                       bitprune_apply, bitprune_scope, check_model)

__all__ = ["bitprune_annotate_layer", "bitprune_annotate_model", "bitprune_apply", "bitprune_model",
           "bitprune_scope", "check_model", "QuantizeWrapperV2"]


def bitprune_model(to_prune: keras.Model, regularization: float = 0.05, weighting: str = "uniform", *,
                   skip_layers: Sequence[str] = (), **options) -> keras.Model:
    """Bit-prunes a tf_keras or Keras 3 model: every kernel and activation gets a learned bitlength.

    ``bitprune_apply(bitprune_annotate_model(model))`` in one call; the options
    are those of :func:`bitprune_apply`.

    >>> import tf_keras as keras
    >>> import tf_bitpruning as tfbp
    >>> model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, name="dense")])
    >>> bp = tfbp.bitprune_model(model, regularization=0.05)
    >>> sorted(tfbp.bitlengths(bp))
    ['dense/activations', 'dense/weights', 'quantize_layer/activations']
    """
    if costs.get_bit_loss(to_prune) is not None:
        raise ValueError(f"Model '{to_prune.name}' is already bit-pruned.")
    return pipeline_for(to_prune).bitprune(to_prune, regularization, weighting, skip_layers,
                                           BitPruneOptions.of("bitprune_model", options))
