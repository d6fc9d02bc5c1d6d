"""What each Keras does to a whole bit-pruned model, chosen from the model: its pipeline.

The shared entry points (:func:`tf_bitpruning.bitprune_model`, ``freeze_bitlengths``, the
exporters, ``save_model``) call :func:`pipeline_for` and never ask which Keras they hold.
The pipelines are :mod:`tf_bitpruning.tfkeras_pipeline` (tfmot) and
:mod:`tf_bitpruning.keras3.pipeline` (our wrapper), each loaded when first needed; which one
follows the model's front end (:func:`tf_bitpruning.frontend.frontend_for`, the one place
that asks which Keras an object belongs to).
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence, runtime_checkable

from tf_bitpruning.frontend import frontend_for


@runtime_checkable
class Pipeline(Protocol):
    """What the shared code does to a whole model, per Keras."""

    def check_model(self, model, what: str, allow_nested: bool = False) -> None:
        """Raises unless ``model`` is a built Sequential or functional model of this Keras
        (``what`` names the caller; ``allow_nested``: models inside it are flattened later)."""

    def bitprune(self, model, regularization: float, weighting: str, skip_layers: Sequence[str],
                 options) -> Any:
        """A bit-pruned copy of ``model`` (:class:`tf_bitpruning.options.BitPruneOptions`),
        with the bit loss attached."""

    def clone_frozen(self, model, freeze_config: Callable[[Any, str], Any],
                     freeze_quantizer: Callable[[Any, str], Any]) -> Any:
        """A copy of a bit-pruned model with every wrapper's config passed through
        ``freeze_config(config, layer name)`` and every input quantizer through
        ``freeze_quantizer(quantizer, layer name)``, all variables copied; no bit loss yet."""

    def export_model(self, model) -> Any:
        """The tf_keras model the exporters walk (a Keras 3 model's twin)."""


    def save(self, model, path, **kwargs) -> None:
        """Saves ``model`` at ``path`` in a format that loads back with its bit loss."""


def pipeline_for(obj: Any) -> Pipeline:
    """The pipeline of the Keras that ``obj`` (a model or layer) belongs to."""
    if frontend_for(obj).name == "keras3":
        from tf_bitpruning.keras3.pipeline import KERAS3_PIPELINE
        return KERAS3_PIPELINE
    from tf_bitpruning.tfkeras_pipeline import TF_KERAS_PIPELINE
    return TF_KERAS_PIPELINE
