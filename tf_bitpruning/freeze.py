"""After learning: round every bitlength, freeze it, fine-tune at fixed precision."""

from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence

import numpy as np
import tf_keras as keras
from tensorflow_model_optimization.python.core.quantization.keras import quantize_layer as tfmot_quantize_layer
from tensorflow_model_optimization.python.core.quantization.keras import quantize_wrapper

from tf_bitpruning import costs
from tf_bitpruning.api import bitprune_scope
from tf_bitpruning.configs import BitPruneQuantizeConfig
from tf_bitpruning.quantizers import ActivationBitQuantizer, BitlengthQuantizer

ROUNDINGS = ("ceil", "round")
# n within this of an integer counts as that integer under "ceil" (float noise).
_CEIL_TOLERANCE = 1e-3


def round_bits(n: float, rounding: str = "ceil", allowed_bits: Optional[Sequence[int]] = None,
               min_bits: int = 1, max_bits: int = 16) -> int:
    """One learned bitlength to the integer it is frozen at."""
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}.")
    b = math.ceil(n - _CEIL_TOLERANCE) if rounding == "ceil" else int(math.floor(n + 0.5))
    b = min(max(b, min_bits), max_bits)
    if allowed_bits:
        larger = sorted(a for a in allowed_bits if a >= b)
        if not larger:
            raise ValueError(f"Bitlength {n:.2f} rounds to {b}, above every allowed bitlength {sorted(allowed_bits)}.")
        b = larger[0]
    return int(b)


def _frozen(quantizer: BitlengthQuantizer, freeze_ranges: bool) -> BitlengthQuantizer:
    config = dict(quantizer.get_config(), frozen=True)
    if isinstance(quantizer, ActivationBitQuantizer):
        config["freeze_range"] = freeze_ranges
    return type(quantizer).from_config(config)


def _freeze_config(config, freeze_ranges):
    if not isinstance(config, BitPruneQuantizeConfig):
        return config
    return config.replace(
        weight_quantizer={a: _frozen(q, freeze_ranges) for a, q in config.weight_quantizers.items()},
        activation_quantizer=_frozen(config.activation_quantizer, freeze_ranges))


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


def freeze_bitlengths(model: keras.Model, rounding: str = "ceil",
                      allowed_bits: Optional[Sequence[int]] = None,
                      freeze_ranges: bool = True) -> keras.Model:
    """A copy of a bit-pruned model with every bitlength rounded and frozen.

    Each tensor then goes through exactly one integer quantizer (no blend), its
    bitlength is no longer trainable, and the bit loss is constant. Compile and
    fine-tune the result as usual.

    Args:
      rounding: ``"ceil"`` (the paper's choice) or ``"round"``.
      allowed_bits: optional hardware set, e.g. ``(2, 4, 8)``: each bitlength is
        snapped up to the nearest allowed value.
      freeze_ranges: also stop the activation range updates (recommended: a
        fine-tune that keeps moving ranges at the learning-phase rate can end
        below where it started).
    """
    tensors = costs.quantized_tensors(model)
    costs._require(model, tensors)
    if allowed_bits is not None:
        allowed_bits = sorted({int(b) for b in allowed_bits})
        if not allowed_bits or allowed_bits[0] < 1 or allowed_bits[-1] > 16:
            raise ValueError(f"allowed_bits must hold integers in [1, 16], got {allowed_bits}.")
    targets = []
    for t in tensors:
        learned = np.asarray(t.quantizer.bitlength(t.variables))
        targets.append(np.vectorize(
            lambda n, q=t.quantizer: round_bits(float(n), rounding, allowed_bits, q.min_bits, 16),
            otypes=[np.float32])(learned))

    # A range that never saw a training batch is empty; frozen, it would clip every
    # activation to 0 during fine-tuning. Such ranges keep calibrating.
    uncalibrated = set()
    for layer in model.layers:
        for q, v in costs._activation_tensors(layer):
            if isinstance(q, ActivationBitQuantizer) and "min" in v and float(v["max"]) <= float(v["min"]):
                uncalibrated.add(layer.name)
    if freeze_ranges and uncalibrated:
        warnings.warn(f"freeze_bitlengths: the activation ranges of {sorted(uncalibrated)} were never "
                      f"calibrated (no training batch yet); they are left to update during fine-tuning.",
                      stacklevel=2)

    def clone(layer):
        freeze_layer_ranges = freeze_ranges and layer.name not in uncalibrated
        if isinstance(layer, quantize_wrapper.QuantizeWrapper):
            inner = layer.layer.__class__.from_config(layer.layer.get_config())
            return quantize_wrapper.QuantizeWrapperV2(
                inner, _freeze_config(layer.quantize_config, freeze_layer_ranges), name=layer.name)
        if isinstance(layer, tfmot_quantize_layer.QuantizeLayer) and isinstance(layer.quantizer, BitlengthQuantizer):
            return tfmot_quantize_layer.QuantizeLayer(_frozen(layer.quantizer, freeze_layer_ranges),
                                                      name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    with bitprune_scope():
        frozen = keras.models.clone_model(model, clone_function=clone)
    _copy_weights(model, frozen)
    for t, b in zip(costs.quantized_tensors(frozen), targets):
        t.bits_variable.assign(b / t.quantizer.bits_lr_multiplier)
    old = costs.get_bit_loss(model)
    if old is not None:
        costs.attach_bit_loss(frozen, float(old.regularization.numpy()), old.weighting)
        costs.get_bit_loss(frozen).kind = getattr(old, "kind", None)
    return frozen
