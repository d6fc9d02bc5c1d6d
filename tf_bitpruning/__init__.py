"""tf_bitpruning: learn how many bits every layer needs (BitPruning, arXiv 2002.03090).

>>> import tf_keras as keras
>>> import tf_bitpruning as tfbp
>>> model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, name="dense")])
>>> bp = tfbp.bitprune_model(model, regularization=0.05)
>>> round(tfbp.average_bits(bp), 1)
8.0
"""

# First: TensorFlow loads quietly when TF_CPP_MIN_LOG_LEVEL asks (and for the CLI; see _logs).
from tf_bitpruning import _logs
from tf_bitpruning._version import __version__  # noqa: F401  (tfbp.__version__)

_logs.import_tensorflow()

from tf_bitpruning.allocate import allocate_bitlengths, calibrate_ranges
from tf_bitpruning.api import (bitprune_annotate_layer, bitprune_annotate_model, bitprune_apply,
                               bitprune_model, bitprune_scope)
from tf_bitpruning.callbacks import BitBudget
from tf_bitpruning.configs import BitPruneQuantizeConfig
from tf_bitpruning.costs import average_bits, bitlengths
from tf_bitpruning.distill import Distill, distillation_loss
from tf_bitpruning.export import align_to_hls4ml, align_to_tflite, export_hls4ml, export_tflite, load_model, read_precision, save_model
# Keras 3 (import keras): registers its layers, so keras.saving.load_model finds them.
from tf_bitpruning import keras3
from tf_bitpruning.freeze import freeze_bitlengths
from tf_bitpruning.quantizers import ActivationBitQuantizer, WeightBitQuantizer
from tf_bitpruning.report import precision_report, summary
from tf_bitpruning.scheme import BitPruneQuantizeScheme

__all__ = [
    "ActivationBitQuantizer",
    "BitBudget",
    "BitPruneQuantizeConfig",
    "BitPruneQuantizeScheme",
    "Distill",
    "WeightBitQuantizer",
    "align_to_hls4ml",
    "align_to_tflite",
    "allocate_bitlengths",
    "average_bits",
    "bitlengths",
    "bitprune_annotate_layer",
    "bitprune_annotate_model",
    "bitprune_apply",
    "bitprune_model",
    "bitprune_scope",
    "calibrate_ranges",
    "distillation_loss",
    "export_hls4ml",
    "export_tflite",
    "keras3",
    "freeze_bitlengths",
    "load_model",
    "precision_report",
    "read_precision",
    "save_model",
    "summary",
]
