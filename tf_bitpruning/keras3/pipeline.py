"""The Keras 3 pipeline: bit-prune, freeze, export (through a tf_keras twin) and save a
Keras 3 model. Chosen by :func:`tf_bitpruning.pipeline.pipeline_for`, with the same
interface (:class:`tf_bitpruning.pipeline.Pipeline`) as :mod:`tf_bitpruning.tfkeras_pipeline`."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, Sequence

from tf_bitpruning import costs
from tf_bitpruning._files import write_atomic
from tf_bitpruning.keras3 import api
from tf_bitpruning.keras3.bridge import to_tf_keras
from tf_bitpruning.options import BitPruneOptions


class Keras3Pipeline:
    """Our ``BitPruneWrapper`` in a re-run graph (:mod:`tf_bitpruning.keras3.api`)."""

    check_model = staticmethod(api.check_model)

    @staticmethod
    def bitprune(model, regularization: float, weighting: str, skip_layers: Sequence[str],
                 options: BitPruneOptions):
        costs.check_regularization(regularization)
        costs.check_weighting(weighting)
        weights, activations = options.quantizers()
        return api.bitprune_model(model, regularization, weighting, skip_layers=skip_layers,
                                  weight_quantizer=weights, activation_quantizer=activations,
                                  quantize_inputs=options.quantize_inputs,
                                  quantize_outputs=options.quantize_outputs)

    @staticmethod
    def clone_frozen(model, freeze_config: Callable[[Any, str], Any], freeze_quantizer: Callable[[Any, str], Any]):
        return api.clone_frozen(model, freeze_config, freeze_quantizer)

    export_model = staticmethod(to_tf_keras)  # the same layers, weights and grids, for the one exporter

    @staticmethod
    def save(model, path, **kwargs) -> None:
        """Keras 3's own ``.keras`` format (which keeps the bit loss): ``model.save`` into a
        temporary file, then an atomic replace of ``path``."""
        path = os.fspath(path)
        if not path.endswith(".keras"):
            raise ValueError(f"save_model('{path}'): a Keras 3 model is saved in Keras 3's own format; "
                             f"give a path that ends in '.keras'.")
        fd, tmp = tempfile.mkstemp(suffix=".keras", dir=os.path.dirname(os.path.abspath(path)))
        os.close(fd)
        try:
            model.save(tmp, **kwargs)
            with open(tmp, "rb") as f:
                write_atomic(path, f.read())
        finally:
            os.remove(tmp)


KERAS3_PIPELINE = Keras3Pipeline()
