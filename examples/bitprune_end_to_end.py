"""End to end: float training -> learn bitlengths to a budget -> freeze -> fine-tune
-> per-layer report -> TFLite with the learned precision.

    python examples/bitprune_end_to_end.py                      # digits, offline
    python examples/bitprune_end_to_end.py --dataset=mnist --target_bits=3
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

flags.DEFINE_enum("dataset", "digits", ["digits", "mnist", "fashion_mnist", "cifar10"],
                  "digits ships with scikit-learn (offline); the others download through keras.datasets.")
flags.DEFINE_float("target_bits", 3.0, "Average bitlength to learn (uniform weighting).")
flags.DEFINE_enum("weighting", "uniform", ["uniform", "memory", "bops"], "How tensors count in the average.")
flags.DEFINE_integer("float_epochs", 20, "Epochs of float training.")
flags.DEFINE_integer("learn_epochs", 40, "Epochs of the bitlength learning phase.")
flags.DEFINE_integer("finetune_epochs", 10, "Epochs of fine-tuning at frozen bitlengths (the best one is kept).")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("out_dir", "out", "Where the TensorBoard logs and the .tflite go.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    # Quiet by default: our progress and results, not TensorFlow's logs (absl's
    # --verbosity=0 brings them back). The level must be set before TensorFlow loads;
    # tf_bitpruning, imported first, then loads it without its load-time lines.
    verbosity = FLAGS.verbosity if FLAGS["verbosity"].present else None
    if verbosity is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tf_bitpruning as tfbp
    import tf_keras as keras
    from tf_bitpruning import _logs

    _logs.quiet_python_logs(verbosity)
    from examples import data
    from examples.models import cnn

    keras.utils.set_random_seed(FLAGS.seed)
    xtr, ytr, xte, yte = data.load(FLAGS.dataset)
    loss = "sparse_categorical_crossentropy"

    model = cnn(xtr.shape[1:])
    model.compile(keras.optimizers.Adam(2e-3), loss, metrics=["accuracy"])
    model.fit(xtr, ytr, epochs=FLAGS.float_epochs, batch_size=FLAGS.batch_size, verbose=0)
    float_acc = model.evaluate(xte, yte, verbose=0)[1]
    print(f"float32 model: test accuracy {float_acc:.4f}")

    bp = tfbp.bitprune_model(model, weighting=FLAGS.weighting, bits_lr_multiplier=20.0)
    bp.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    # The last quarter of the epochs anneals the bitlengths to integers within the
    # budget, chosen by how little they change the outputs on 256 training inputs.
    budget = tfbp.BitBudget(target_bits=FLAGS.target_bits, weighting=FLAGS.weighting,
                            log_dir=os.path.join(FLAGS.out_dir, "logs"), calibration_data=xtr[:256])
    bp.fit(xtr, ytr, epochs=FLAGS.learn_epochs, batch_size=FLAGS.batch_size,
           validation_data=(xte, yte), callbacks=[budget], verbose=2)
    learned_acc = bp.evaluate(xte, yte, verbose=0)[1]
    learned_bits = tfbp.average_bits(bp, weighting=FLAGS.weighting)
    print(f"learned bitlengths (average {learned_bits:.2f}; BitBudget anneals them to integers):")
    for name, bits in tfbp.bitlengths(bp).items():
        print(f"  {name:40s} {bits:5.2f}")

    # At or under the budget, whatever the learning phase ended at.
    frozen = tfbp.freeze_bitlengths(bp, target_bits=FLAGS.target_bits, weighting=FLAGS.weighting,
                                    calibration_data=xtr[:256])
    frozen.compile(keras.optimizers.Adam(3e-4), loss, metrics=["accuracy"])
    frozen_acc = frozen.evaluate(xte, yte, verbose=0)[1]
    # Fine-tuning is noisy at few bits: keep the best epoch on held-out training data,
    # and never end below where it started.
    n_val = len(xtr) // 6
    start_val = frozen.evaluate(xtr[-n_val:], ytr[-n_val:], verbose=0)[1]
    start_weights = frozen.get_weights()
    keep_best = keras.callbacks.EarlyStopping("val_accuracy", patience=FLAGS.finetune_epochs,
                                              restore_best_weights=True)
    history = frozen.fit(xtr[:-n_val], ytr[:-n_val], epochs=FLAGS.finetune_epochs, batch_size=FLAGS.batch_size,
                         validation_data=(xtr[-n_val:], ytr[-n_val:]), callbacks=[keep_best], verbose=0)
    if max(history.history["val_accuracy"]) < start_val:
        frozen.set_weights(start_weights)
    tuned_acc = frozen.evaluate(xte, yte, verbose=0)[1]
    tfbp.summary(frozen)

    os.makedirs(FLAGS.out_dir, exist_ok=True)
    path = os.path.join(FLAGS.out_dir, f"{FLAGS.dataset}_bitpruned.tflite")
    with _logs.native_stderr_muted(verbosity is None):  # the converter's C++ prints
        tfbp.export_tflite(frozen, path, representative_dataset=xtr[:256])
    print(f"wrote {path} ({os.path.getsize(path)} bytes); precision in its metadata:")
    for layer, precision in tfbp.read_precision(path).items():
        print(f"  {layer:32s} {precision}")
    deployed_bits = tfbp.average_bits(frozen, weighting=FLAGS.weighting)
    print(f"\nbits ({FLAGS.weighting}): budget {FLAGS.target_bits:.2f} | learned {learned_bits:.2f} | "
          f"deployed {deployed_bits:.2f}")
    print(f"accuracy: float {float_acc:.4f} | learning phase {learned_acc:.4f} | frozen {frozen_acc:.4f} "
          f"| fine-tuned {tuned_acc:.4f}")


if __name__ == "__main__":
    app.run(main)
