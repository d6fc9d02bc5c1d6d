"""The bit-pruning ``QuantizeScheme``: the registry (layer class -> config,
:mod:`tf_bitpruning.registry`) and the layout transform (:mod:`tf_bitpruning.layout`),
plugged into tfmot's ``quantize_apply``. The layer tables both read are in
:mod:`tf_bitpruning.layer_kinds`.

Placement of quantizers (what TFLite executes, as in tfmot's 8-bit scheme):
- kernels of Dense, Conv1D/2D, Conv2DTranspose, DepthwiseConv2D and
  SeparableConv1D/2D get a :class:`WeightBitQuantizer` each (per-channel scale for
  convolutions, per-tensor for Dense);
- a SeparableConv2D is split into ``<name>_depthwise`` (DepthwiseConv2D) and
  ``<name>_pointwise`` (a 1x1 Conv2D with the bias and activation), as tfmot's
  8-bit scheme does: the tensor between its kernels, which TFLite keeps between
  two ops, gets a learned grid (the depthwise output quantizer) like any other.
  A SeparableConv2D with a config of the user's own is left whole, and so is a
  SeparableConv1D (its inner tensor stays float: its export needs
  ``representative_dataset=``);
- a layer's output activation gets an :class:`ActivationBitQuantizer`, except where
  its only consumer re-quantizes the same values right away in a way the exported
  file reproduces (ReLU, LeakyReLU, Concatenate; an Activation that TFLite fuses
  or tfmot quantizes first; a BatchNormalization after a conv/dense kernel, which
  the exporter folds; a Concatenate keeps its own before an activation, which
  TFLite cannot fuse into it): there the consumer's quantizer is the one that counts. So ``Conv2D -> BatchNormalization -> ReLU`` quantizes the conv
  kernel and the ReLU output: **BatchNormalization is quantized after, not
  folded**. The float BN scale is folded into the per-channel conv scale at
  export, which keeps the b-bit grid exact;
- pass-through layers (Flatten, Reshape, Dropout, MaxPooling, padding, ...) are
  not quantized; the model inputs get an activation quantizer of their own;
- preprocessing (``Rescaling``, ``Normalization``) right after a model input runs
  in float: the input quantizer moves to the end of that chain (TFLite runs the
  few float ops on the input, then QUANTIZE); elsewhere its output is quantized;
- ``TFOpLambda`` elementwise math (``x + 3``, ``x * (1/6)``, ``tf.nn.relu6``, ...)
  quantizes its output; reshaping ops and slicing pass through. Activations that
  tfmot's quantize-aware activation does not know (``relu6``, ``hard_sigmoid``,
  ``elu``, ...) are supported in ``Activation`` layers, with the output quantized.
"""

from __future__ import annotations

from typing import Optional

import tensorflow_model_optimization as tfmot

from tf_bitpruning.layout import BitPruneLayoutTransform
from tf_bitpruning.quantizers import ActivationBitQuantizer, WeightBitQuantizer
from tf_bitpruning.registry import BitPruneQuantizeRegistry


class BitPruneQuantizeScheme(tfmot.quantization.keras.QuantizeScheme):
    """The scheme to pass to ``tfmot.quantization.keras.quantize_apply``.

    >>> scheme = BitPruneQuantizeScheme(WeightBitQuantizer(max_bits=6))
    """

    def __init__(self, weight_quantizer: Optional[WeightBitQuantizer] = None,
                 activation_quantizer: Optional[ActivationBitQuantizer] = None,
                 quantize_inputs: bool = True, quantize_outputs: bool = True):
        self._registry = BitPruneQuantizeRegistry(weight_quantizer, activation_quantizer)
        self._quantize_inputs = quantize_inputs
        self._quantize_outputs = quantize_outputs

    def get_layout_transformer(self):
        return BitPruneLayoutTransform(self._registry, self._quantize_inputs, self._quantize_outputs)

    def get_quantize_registry(self):
        return self._registry
