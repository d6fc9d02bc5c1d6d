"""The tf_keras front end's public API, tfmot-style: annotate, apply, scope.

Re-exported by :mod:`tf_bitpruning.api` (and the package); :func:`tf_bitpruning.bitprune_model`
reaches it for tf_keras models through :mod:`tf_bitpruning.tfkeras_pipeline`.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import tf_keras as keras
import tensorflow_model_optimization as tfmot

from tf_bitpruning import _compat, attention_layers, costs, flatten, layout, op_lambdas
from tf_bitpruning.frontend import frontend_for
from tf_bitpruning.configs import BitPruneQuantizeConfig
from tf_bitpruning.layer_kinds import op_lambda_function
from tf_bitpruning.options import BitPruneOptions
from tf_bitpruning.quantizers import ActivationBitQuantizer, WeightBitQuantizer, _ClipParam
from tf_bitpruning.registry import BitPruneQuantizeRegistry, is_pass_through
from tf_bitpruning.scheme import BitPruneQuantizeScheme

_tfq = tfmot.quantization.keras



def check_model(model, what: str, allow_nested: bool = False) -> None:
    """Raises unless ``model`` is a built Sequential or functional tf_keras model without
    nested models (what tfmot can clone; ``allow_nested``: with them, which
    :func:`tf_bitpruning.flatten.flatten` removes); ``what`` names the caller in the message."""
    if model is None:
        raise ValueError(f"{what}: model is None.")
    frontend_for(model).require_tfmot(what)
    if not isinstance(model, keras.Model):
        raise TypeError(f"{what}: expected a tf_keras Model, got {type(model).__name__}. "
                        f"Use bitprune_annotate_layer for a single layer.")
    if not isinstance(model, keras.Sequential) and not _compat.is_graph_network(model):
        raise ValueError(
            f"{what}: '{model.name}' is a subclassed model ({type(model).__name__}); tfmot can only "
            f"clone Sequential and functional models. Rebuild it with the functional API "
            f"(keras.Input -> layers -> keras.Model).")
    if not model.built:
        raise ValueError(f"{what}: model '{model.name}' is not built. Give it an input shape "
                         f"(keras.Input or input_shape=...) or call model.build(input_shape).")
    nested = [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    if nested and not allow_nested:
        raise ValueError(
            f"{what}: model '{model.name}' contains nested model(s) {nested}: tfmot cannot quantize a "
            f"model inside a model. Give it to tfbp.bitprune_annotate_model or tfbp.bitprune_model, "
            f"which flatten it (tfbp.flatten.flatten).")


def bitprune_annotate_layer(to_annotate: keras.layers.Layer,
                            quantize_config: Optional[_tfq.QuantizeConfig] = None):
    """Marks one layer for bit pruning, optionally with its own config.

    Use it for custom layers (give a :class:`BitPruneQuantizeConfig`) or to choose
    which layers of a model get bit-pruned.

    >>> layer = bitprune_annotate_layer(keras.layers.Dense(10))
    """
    frontend_for(to_annotate).require_tfmot("bitprune_annotate_layer")
    if not isinstance(to_annotate, keras.layers.Layer) or isinstance(to_annotate, keras.Model):
        raise TypeError(f"bitprune_annotate_layer: expected a tf_keras layer, got "
                        f"{type(to_annotate).__name__}.")
    if quantize_config is not None and not isinstance(quantize_config, _tfq.QuantizeConfig):
        raise TypeError(f"bitprune_annotate_layer: quantize_config must be a tfmot QuantizeConfig "
                        f"(e.g. tfbp.BitPruneQuantizeConfig), got {type(quantize_config).__name__}.")
    if quantize_config is None:
        reason = BitPruneQuantizeRegistry().unsupported_reason(to_annotate)
        if reason:
            raise ValueError(f"Layer '{to_annotate.name}': {reason}. Pass a "
                             f"tfbp.BitPruneQuantizeConfig(weight_attrs, activation_attrs, "
                             f"quantize_output) as quantize_config.")
    return _tfq.quantize_annotate_layer(to_annotate, quantize_config)


def bitprune_annotate_model(to_annotate: keras.Model, skip_layers: Sequence[str] = ()) -> keras.Model:
    """Marks every layer of a Sequential or functional model for bit pruning.

    Layers already annotated with :func:`bitprune_annotate_layer` keep their
    config; layers named in ``skip_layers`` stay float. Raises a ``ValueError``
    naming every layer that has no built-in config. Nested models are flattened
    first (:func:`tf_bitpruning.flatten.flatten`).
    """
    check_model(to_annotate, "bitprune_annotate_model", allow_nested=True)
    skip = set(skip_layers)
    to_annotate = flatten.flatten(to_annotate, keep=skip)
    unknown = skip - {layer.name for layer in to_annotate.layers}
    if unknown:
        raise ValueError(f"bitprune_annotate_model: skip_layers names no layer of the model: {sorted(unknown)}.")
    registry = BitPruneQuantizeRegistry()
    problems = []
    for layer in to_annotate.layers:
        if layer.name in skip or isinstance(layer, _compat.QuantizeAnnotate):
            continue
        reason = registry.unsupported_reason(layer)
        if reason:
            problems.append(f"  - '{layer.name}' ({type(layer).__name__}): {reason}")
    if problems:
        raise ValueError(
            "bitprune_annotate_model: these layers cannot be bit-pruned automatically:\n"
            + "\n".join(problems)
            + "\nEither wrap them with tfbp.bitprune_annotate_layer(layer, tfbp.BitPruneQuantizeConfig(...)) "
              "before calling this, or leave them in float with skip_layers=[...names...].")

    chained = layout.training_only_in_chains(to_annotate.layers)

    def annotate(layer):
        if type(layer) is keras.layers.RandomCrop and layer.name not in skip:
            layer = op_lambdas.RandomCrop.from_config(layer.get_config())
        if layer.name in chained and layer.name not in skip:
            return _compat.QuantizeAnnotate(layer)
        if (layer.name in skip or is_pass_through(layer)
                or isinstance(layer, (_compat.QuantizeAnnotate, keras.layers.InputLayer))):
            return layer
        if op_lambda_function(layer) is not None:
            return op_lambdas.annotate(layer)
        return _compat.QuantizeAnnotate(layer)

    with bitprune_scope():
        return keras.models.clone_model(to_annotate, input_tensors=None, clone_function=annotate)


def bitprune_apply(model: keras.Model, regularization: float = 0.05, weighting: str = "uniform", *,
                   weight_bits: Tuple[int, int] = (2, 8), activation_bits: Tuple[int, int] = (1, 8),
                   init_bits: Optional[float] = None, bits_lr_multiplier: float = 10.0,
                   per_channel_bits: bool = False, quantize_inputs: bool = True,
                   quantize_outputs: bool = True, weight_clip: str = "max", activation_range: str = "ema",
                   grid: str = "minmax") -> keras.Model:
    """Turns an annotated model into a bit-pruned one (tfmot's ``quantize_apply``
    with :class:`BitPruneQuantizeScheme`) and attaches the bit loss.

    Args:
      model: the output of :func:`bitprune_annotate_model` (or a model with
        layers wrapped by :func:`bitprune_annotate_layer`).
      regularization: λ, the weight of the average bitlength in the loss.
      weighting: ``"uniform"``, ``"memory"`` or ``"bops"``, see :mod:`costs`.
      weight_bits, activation_bits: ``(min_bits, max_bits)`` of the bitlengths.
      init_bits: starting bitlength of every tensor (default: the top of its range).
      bits_lr_multiplier: bitlengths learn this many times faster than weights.
      per_channel_bits: one bitlength per output channel of every kernel.
      quantize_inputs: give the model inputs a learned-bitlength quantizer.
      quantize_outputs: give the model outputs one. ``False`` leaves them float, as
        HGQ2 does (kernels stay quantized; a softmax's logits stay float too): no
        argmax ties on a coarse output grid, and the budget covers the other tensors.
        The export then calibrates them at 8 bits (``representative_dataset=``).
      weight_clip: the top of every weight grid, ``"max"`` (``max|w|``, the
        paper's min-max) or ``"mse"`` (the clip with the least squared error at
        each integer bitlength; far better for ternary kernels, not always at 3
        bits), see ``WeightBitQuantizer``.
      activation_range: how each activation range follows the training batches:
        ``"ema"`` (tfmot's moving average) or ``"expand"`` (at once to take in a batch
        beyond it, back at the moving-average rate). Train deep networks from random
        weights with ``"expand"`` (VGG16 does not train otherwise; ResNet50 reaches
        90 % instead of 36 % on digits); ``"ema"`` holds more accuracy at 2-3 bits;
        ``"learned"``: trained by gradient (LSQ) from the first batch's range
        (docs/accuracy.md). See ``ActivationBitQuantizer``.
      grid: ``"minmax"`` (the spec's grids) or ``"pow2"``: every step rounded up to a
        power of two (bitlengths still learned), so that fixed-point hardware holds
        each grid exactly as a ``fixed<b, I>``/``ufixed<b, I>`` type
        (:func:`tf_bitpruning.export_hls4ml`). Kernels then get one step per tensor
        (one type per layer) instead of one per output channel.

    Returns:
      A new tf_keras model; compile and fit it as usual.
    """
    check_model(model, "bitprune_apply")
    costs.check_regularization(regularization)
    costs.check_weighting(weighting)
    options = BitPruneOptions(weight_bits, activation_bits, init_bits, bits_lr_multiplier, per_channel_bits,
                              quantize_inputs, quantize_outputs, weight_clip, activation_range, grid)
    options.quantizers()
    if not any(isinstance(layer, _compat.QuantizeAnnotate) for layer in model.layers):
        raise ValueError("bitprune_apply: no layer is annotated. Call tfbp.bitprune_annotate_model(model) "
                         "first, or use tfbp.bitprune_model(model) which does both.")
    scheme = BitPruneQuantizeScheme(*options.quantizers(), quantize_inputs=quantize_inputs,
                                    quantize_outputs=quantize_outputs)
    with bitprune_scope():
        quantized = _tfq.quantize_apply(model, scheme)
    _compat.keep_frozen(quantized)
    costs.attach_bit_loss(quantized, regularization, weighting)
    return quantized


class QuantizeWrapperV2(_compat.QuantizeWrapperV2):
    """tfmot's wrapper, loaded so that its weights keep their saved order.

    tfmot lists a wrapper's own trainable variables (the bitlengths) before the
    wrapped layer's kernel when the layer is built from a config, but after it in
    the model that was saved; h5 files restore weights by position, so loading
    failed. Building the wrapped layer first restores the saved order.
    """

    def build(self, input_shape):
        if not self.layer.built:
            self.layer.build(input_shape)
            self.layer.built = True
        super().build(input_shape)
        _compat.keep_frozen(self)


def bitprune_scope(*args):
    """A scope that makes tf_bitpruning's (and tfmot's) classes known to Keras, for
    loading saved bit-pruned models::

        with tfbp.bitprune_scope():
            model = keras.models.load_model(path)
    """
    objects = {
        "BitPruneQuantizeConfig": BitPruneQuantizeConfig,
        "WeightBitQuantizer": WeightBitQuantizer,
        "ActivationBitQuantizer": ActivationBitQuantizer,
        "_ClipParam": _ClipParam,
        **op_lambdas.CUSTOM_OBJECTS,
        **attention_layers.CUSTOM_OBJECTS,
    }
    for extra in args:
        objects.update(extra)
    # tfmot's scope lists its own classes last; ours must win for the wrapper.
    return keras.utils.custom_object_scope(*_tfq.quantize_scope(objects).custom_objects,
                                           {"QuantizeWrapperV2": QuantizeWrapperV2})
