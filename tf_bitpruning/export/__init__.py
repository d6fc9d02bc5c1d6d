"""Export and persistence of frozen bit-pruned models.

- :func:`export_tflite`: a full-integer ``.tflite`` file that computes the learned
  b-bit grids (int8 containers, ≤ 4-bit filters packed as INT4 where LiteRT
  runs them as fast: ``int4="auto"``), with the learned precision of every
  tensor in its metadata (the pipeline: :mod:`.tflite`);
- :func:`align_to_tflite`: moves the model's biases onto the int32 values its file
  adds, so that Keras computes what the file computes (:mod:`.align`);
- :func:`export_hls4ml`: an hls4ml project (fixed-point types of the learned bitlengths) of a
  model on power-of-two grids, and :func:`align_to_hls4ml` (:mod:`.hls4ml`);
- :func:`read_precision` / :func:`read_metadata`: read that metadata back;
- :func:`save_model` / :func:`load_model` / :func:`restore_bit_loss`: SavedModel
  and h5 round trips that bring the bit loss back (see :mod:`.persistence`);
- ``python -m tf_bitpruning.export SAVED_MODEL OUT.tflite``: the export from a shell.
"""

from tf_bitpruning.export.align import align_to_tflite
from tf_bitpruning.export.hls4ml import HlsExport, align_to_hls4ml, export_hls4ml
from tf_bitpruning.export.metadata import (METADATA_NAME, PrecisionMetadataError, precision_table,
                                           read_metadata, read_precision)
from tf_bitpruning.export.persistence import load_model, restore_bit_loss, save_model
from tf_bitpruning.export.tflite import ExportError, export_graph, export_tflite

__all__ = [
    "METADATA_NAME",
    "ExportError",
    "HlsExport",
    "PrecisionMetadataError",
    "align_to_hls4ml",
    "align_to_tflite",
    "export_hls4ml",
    "export_graph",
    "export_tflite",
    "load_model",
    "precision_table",
    "read_metadata",
    "read_precision",
    "restore_bit_loss",
    "save_model",
]
