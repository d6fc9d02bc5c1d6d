"""End to end: float training -> learn bitlengths to a budget -> freeze -> fine-tune
-> per-layer report -> TFLite with the learned precision -> saved model.

    python examples/bitprune_end_to_end.py                      # digits, offline
    python examples/bitprune_end_to_end.py --dataset=mnist --target_bits=3
    python examples/bitprune_end_to_end.py --keras=2            # tf_keras; --keras=3: Keras 3

With either Keras (``--keras``; default: what ``import keras`` gives, printed first)
the same calls run: the model, optimizers, losses and callbacks come from that Keras,
the bit-pruning calls are the same. It also prints the median step time of each
``fit`` (bit-pruned against float) and saves the frozen model: ``.keras`` under
Keras 3, a SavedModel (``tfbp.save_model``) under tf_keras.
"""

from __future__ import annotations

import os
import sys
import time

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
flags.DEFINE_string("out_dir", "out", "Where the TensorBoard logs, the .tflite and the saved model go.")
flags.DEFINE_enum("keras", None, ["2", "3"],
                  "2: tf_keras (Keras 2, through tfmot); 3: Keras 3 (import keras, TensorFlow backend). "
                  "Default: whichever `import keras` gives (said in the output).")
FLAGS = flags.FLAGS


def step_timer(keras):
    """A callback of ``keras`` that records the wall time between consecutive training
    steps of a ``fit`` (the step and every callback's per-batch work), leaving out the
    first epoch (tracing) and the first step of every epoch (validation, epoch-end work).
    ``ms()`` is the 10th percentile: other load on the machine only adds time, so a low
    percentile is the step's own cost (a median moves with whatever else runs)."""
    import numpy as np

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.times, self._last, self._epoch = [], None, 0

        def on_epoch_begin(self, epoch, logs=None):
            self._last, self._epoch = None, epoch

        def on_train_batch_end(self, batch, logs=None):
            now = time.perf_counter()
            if self._last is not None and self._epoch > 0:
                self.times.append(now - self._last)
            self._last = now

        def ms(self) -> float:
            return 1000.0 * float(np.percentile(self.times, 10)) if self.times else float("nan")

    return StepTimer()


def main(argv):
    del argv
    # Quiet by default: our progress and results, not TensorFlow's logs (absl's
    # --verbosity=0 brings them back). The level must be set before TensorFlow loads;
    # tf_bitpruning, imported first, then loads it without its load-time lines.
    verbosity = FLAGS.verbosity if FLAGS["verbosity"].present else None
    if verbosity is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tf_bitpruning as tfbp
    from tf_bitpruning import _logs

    _logs.quiet_python_logs(verbosity)
    from examples import data
    from examples.models import cnn, resolve_keras

    keras, said = resolve_keras(FLAGS.keras)
    print(f"Keras: {said}")
    keras.utils.set_random_seed(FLAGS.seed)
    xtr, ytr, xte, yte = data.load(FLAGS.dataset, keras)
    loss = keras.losses.SparseCategoricalCrossentropy()

    def accuracy(m, x, y) -> float:
        return float(m.evaluate(x, y, verbose=0, return_dict=True)["accuracy"])

    model = cnn(xtr.shape[1:], keras=keras)
    model.compile(keras.optimizers.Adam(2e-3), loss, metrics=["accuracy"])
    float_timer = step_timer(keras)
    model.fit(xtr, ytr, epochs=FLAGS.float_epochs, batch_size=FLAGS.batch_size, verbose=0,
              callbacks=[float_timer])
    float_acc = accuracy(model, xte, yte)
    print(f"float32 model: test accuracy {float_acc:.4f}")

    bp = tfbp.bitprune_model(model, weighting=FLAGS.weighting, bits_lr_multiplier=20.0)
    bp.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    # The last quarter of the epochs anneals the bitlengths to integers within the
    # budget, chosen by how little they change the outputs on 256 training inputs.
    budget = tfbp.BitBudget(target_bits=FLAGS.target_bits, weighting=FLAGS.weighting,
                            log_dir=os.path.join(FLAGS.out_dir, "logs"), calibration_data=xtr[:256])
    learn_timer = step_timer(keras)
    bp.fit(xtr, ytr, epochs=FLAGS.learn_epochs, batch_size=FLAGS.batch_size,
           validation_data=(xte, yte), callbacks=[budget, learn_timer], verbose=2)
    learned_acc = accuracy(bp, xte, yte)
    learned_bits = tfbp.average_bits(bp, weighting=FLAGS.weighting)
    print(f"learned bitlengths (average {learned_bits:.2f}; BitBudget anneals them to integers):")
    for name, bits in tfbp.bitlengths(bp).items():
        print(f"  {name:40s} {bits:5.2f}")

    # At or under the budget, whatever the learning phase ended at.
    frozen = tfbp.freeze_bitlengths(bp, target_bits=FLAGS.target_bits, weighting=FLAGS.weighting,
                                    calibration_data=xtr[:256])
    frozen.compile(keras.optimizers.Adam(3e-4), loss, metrics=["accuracy"])
    frozen_acc = accuracy(frozen, xte, yte)
    # Fine-tuning is noisy at few bits: keep the best epoch on held-out training data,
    # and never end below where it started.
    n_val = len(xtr) // 6
    start_val = accuracy(frozen, xtr[-n_val:], ytr[-n_val:])
    start_weights = frozen.get_weights()
    keep_best = keras.callbacks.EarlyStopping("val_accuracy", patience=FLAGS.finetune_epochs,
                                              restore_best_weights=True)
    tune_timer = step_timer(keras)
    history = frozen.fit(xtr[:-n_val], ytr[:-n_val], epochs=FLAGS.finetune_epochs, batch_size=FLAGS.batch_size,
                         validation_data=(xtr[-n_val:], ytr[-n_val:]), callbacks=[keep_best, tune_timer],
                         verbose=0)
    if max(history.history["val_accuracy"]) < start_val:
        frozen.set_weights(start_weights)
    tuned_acc = accuracy(frozen, xte, yte)
    tfbp.summary(frozen)

    os.makedirs(FLAGS.out_dir, exist_ok=True)
    path = os.path.join(FLAGS.out_dir, f"{FLAGS.dataset}_bitpruned.tflite")
    with _logs.native_stderr_muted(verbosity is None):  # the converter's C++ prints
        tfbp.export_tflite(frozen, path, representative_dataset=xtr[:256])
    print(f"wrote {path} ({os.path.getsize(path)} bytes); precision in its metadata:")
    for layer, precision in tfbp.read_precision(path).items():
        print(f"  {layer:32s} {precision}")
    saved = _save(keras, tfbp, frozen, xte[:64])
    print(f"saved {saved} (loaded back: the same outputs and bitlengths)")
    deployed_bits = tfbp.average_bits(frozen, weighting=FLAGS.weighting)
    print(f"\nbits ({FLAGS.weighting}): budget {FLAGS.target_bits:.2f} | learned {learned_bits:.2f} | "
          f"deployed {deployed_bits:.2f}")
    print(f"accuracy: float {float_acc:.4f} | learning phase {learned_acc:.4f} | frozen {frozen_acc:.4f} "
          f"| fine-tuned {tuned_acc:.4f}")
    f_ms, l_ms, t_ms = float_timer.ms(), learn_timer.ms(), tune_timer.ms()
    print(f"step time (ms/step in fit, 10th percentile, batch {FLAGS.batch_size}): float {f_ms:.2f} | "
          f"learning phase {l_ms:.2f} ({l_ms / f_ms:.2f}x float) | fine-tune {t_ms:.2f} ({t_ms / f_ms:.2f}x float)")


def _save(keras, tfbp, frozen, x) -> str:
    """Saves the frozen model the way its Keras does, loads it back and checks it."""
    import numpy as np

    if keras.__name__ == "tf_keras":
        # tfmot wrappers do not load from .keras: SavedModel (or h5) through tfbp.save_model.
        path = os.path.join(FLAGS.out_dir, f"{FLAGS.dataset}_bitpruned_savedmodel")
        tfbp.save_model(frozen, path)
        loaded = tfbp.load_model(path)
    else:
        # Keras 3's own format; tf_bitpruning's layers are registered when it is imported.
        path = os.path.join(FLAGS.out_dir, f"{FLAGS.dataset}_bitpruned.keras")
        frozen.save(path)
        loaded = keras.saving.load_model(path)
    diff = float(np.max(np.abs(loaded.predict(x, verbose=0) - frozen.predict(x, verbose=0))))
    if diff > 1e-6 or tfbp.bitlengths(loaded) != tfbp.bitlengths(frozen):
        raise RuntimeError(f"{path} loads back differently (max output difference {diff}).")
    return path


if __name__ == "__main__":
    app.run(main)
