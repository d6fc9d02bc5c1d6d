"""Export a saved, frozen bit-pruned model to a full-integer TFLite file.

    python -m tf_bitpruning.export SAVED_MODEL OUT.tflite [--representative_data data.npy|.npz]
                                   [--int4 auto|true|false] [--io_type float32|int8|uint8]

SAVED_MODEL is a SavedModel directory (or .h5 file) of a model made with
``tfbp.freeze_bitlengths`` and saved with ``model.save(...)``. Prints the learned
precision of every tensor (the table written into the file's metadata).

Quiet by default: TensorFlow's C++ and absl logs are hidden (see ``tf_bitpruning._logs``);
``--verbosity=0`` shows them all, ``--verbosity=-1`` warnings and errors.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from tf_bitpruning import _logs

FLAGS = flags.FLAGS
flags.DEFINE_string("representative_data", None,
                    "Optional .npy or .npz file of model inputs (first axis: samples), used to calibrate "
                    "tensors without a learned quantizer.")
flags.DEFINE_string("npz_key", None, "Array to use from a .npz file (default: 'x' if present, else the first).")
flags.DEFINE_integer("max_samples", 500, "Use at most this many representative samples.")
flags.DEFINE_enum("int4", "auto", ["auto", "true", "false"],
                  "Store ≤4-bit filters as INT4: 'auto' where LiteRT runs them as fast as INT8, 'true' all "
                  "(smallest file), 'false' none.")
flags.DEFINE_enum("io_type", "float32", ["float32", "int8", "uint8"], "Input and output type of the file.")


def _load_samples(path: str, key=None):
    import numpy as np

    if not os.path.isfile(path):
        raise app.UsageError(f"--representative_data: no such file '{path}'.")
    data = np.load(path, allow_pickle=False)
    if isinstance(data, np.ndarray):
        return data
    names = list(data.files)
    if not names:
        raise app.UsageError(f"--representative_data: '{path}' holds no arrays.")
    if key is None:
        key = "x" if "x" in names else names[0]
    if key not in names:
        raise app.UsageError(f"--npz_key: '{path}' has no array '{key}' (it has {names}).")
    return data[key]


def main(argv) -> int:
    if len(argv) != 3:
        raise app.UsageError("usage: python -m tf_bitpruning.export SAVED_MODEL OUT.tflite "
                             "[--representative_data data.npy|.npz]")
    source, out = argv[1], argv[2]
    if not os.path.exists(source):
        raise app.UsageError(f"SAVED_MODEL: no such file or directory '{source}'.")
    verbosity = FLAGS.verbosity if FLAGS["verbosity"].present else None
    _logs.quiet_python_logs(verbosity)
    import tensorflow as tf

    from tf_bitpruning.export import export_tflite, precision_table
    from tf_bitpruning.export.persistence import load_model

    samples = None
    if FLAGS.representative_data:
        samples = _load_samples(FLAGS.representative_data, FLAGS.npz_key)[:FLAGS.max_samples]
    io_type = {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}[FLAGS.io_type]
    int4 = {"auto": "auto", "true": True, "false": False}[FLAGS.int4]
    try:
        # Quiet: the converter's C++ writes straight to stderr too.
        with _logs.native_stderr_muted(verbosity is None):
            model = load_model(source, regularization=0.0, compile=False)
            info = export_tflite(model, out, samples, int4=int4,
                                 inference_input_type=io_type, inference_output_type=io_type)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(precision_table(info))
    print(f"wrote {out} ({os.path.getsize(out)} bytes)")
    return 0


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
