"""Bit pruning for Keras 3 (``import keras``, TensorFlow backend), without tfmot.

The same registry (:mod:`tf_bitpruning.scheme`), configs and quantizer math
(:mod:`tf_bitpruning.quantizers`, :mod:`tf_bitpruning.quant_ops`) as the tf_keras
path; Keras 3 gets its own wrapper layer (:class:`BitPruneWrapper`) in place of
tfmot's ``QuantizeWrapperV2``. Users call the package's public functions, which
dispatch here for Keras 3 models; see ``docs/keras3.md``.
"""

from tf_bitpruning.keras3.layers import BitPrunedModel, BitPruneInputQuantizer, BitPruneWrapper
from tf_bitpruning.keras3.ops import KerasOpLambda

__all__ = ["BitPruneInputQuantizer", "BitPruneWrapper", "BitPrunedModel", "KerasOpLambda"]
