"""Helper for test_resume.py, run as a subprocess (not collected by pytest).

Trains the digits CNN (examples/models.py) with ``BitBudget`` for EPOCHS epochs and
saves the training state at every epoch end, either with
``keras.callbacks.BackupAndRestore`` ("backup") or with a ``tf.train.Checkpoint`` of
model + optimizer ("checkpoint"). With ``--die-at E:B`` the process ends itself with
``os._exit`` after batch B of epoch E, as a killed job would (no cleanup, no
``on_train_end``, the batches since the last save lost). Started again without
``--die-at``, it resumes from the saved state and finishes the run. Prints one JSON
line: bitlengths, λ, every model variable and the epochs this process trained.

Usage: python resume_run.py {backup,checkpoint} STATE_DIR [--die-at EPOCH:BATCH]
"""

import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

import tf_bitpruning as tfbp  # noqa: E402
from examples.models import small_cnn  # noqa: E402
from tf_bitpruning import costs  # noqa: E402

tf.config.experimental.enable_op_determinism()

EPOCHS, BATCH, STEPS = 4, 64, 6  # the last two epochs anneal (anneal=0.5 below)
KILLED = 17  # the exit status of a run that died on purpose


class Die(keras.callbacks.Callback):
    """Ends the process abruptly after batch ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int):
        super().__init__()
        self.epoch, self.batch, self.current = epoch, batch, -1

    def on_epoch_begin(self, epoch, logs=None):
        self.current = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.current, batch) == (self.epoch, self.batch):
            sys.stdout.flush()
            os._exit(KILLED)


class SaveCheckpoint(keras.callbacks.Callback):
    """A user's per-epoch ``tf.train.Checkpoint`` of model + optimizer (+ the epoch)."""

    def __init__(self, manager: tf.train.CheckpointManager, epoch: tf.Variable):
        super().__init__()
        self.manager, self.epoch = manager, epoch

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.assign(epoch + 1)
        self.manager.save()


class Epochs(keras.callbacks.Callback):
    """Records which epochs this process trained."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["backup", "checkpoint"])
    parser.add_argument("state_dir")
    parser.add_argument("--die-at", default=None, help="EPOCH:BATCH")
    args = parser.parse_args()

    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    n = STEPS * BATCH
    x, y = (x[:n] / 16.0).astype("float32").reshape(-1, 8, 8, 1), y[:n].astype("int32")

    keras.utils.set_random_seed(0)
    bp = tfbp.bitprune_model(small_cnn(), regularization=0.05, bits_lr_multiplier=20.0)
    bp.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy")
    budget = tfbp.BitBudget(target_bits=4.0, anneal=0.5)
    epochs = Epochs()
    callbacks = [budget]
    initial_epoch = 0
    if args.mode == "backup":
        callbacks.append(keras.callbacks.BackupAndRestore(args.state_dir))
    else:
        epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        checkpoint = tf.train.Checkpoint(model=bp, optimizer=bp.optimizer, epoch=epoch)
        manager = tf.train.CheckpointManager(checkpoint, args.state_dir, max_to_keep=1)
        if manager.latest_checkpoint:
            checkpoint.restore(manager.latest_checkpoint)  # slots and BitBudget's state: deferred
            initial_epoch = int(epoch.numpy())
        callbacks.append(SaveCheckpoint(manager, epoch))
    callbacks.append(epochs)
    if args.die_at:
        callbacks.append(Die(*(int(v) for v in args.die_at.split(":"))))
    bp.fit(x, y, batch_size=BATCH, epochs=EPOCHS, initial_epoch=initial_epoch, shuffle=False,
           verbose=0, callbacks=callbacks)
    print(json.dumps({
        "epochs": epochs.seen,
        "bits": tfbp.bitlengths(bp),
        "bit_lambda": float(costs.get_bit_loss(bp).regularization.numpy()),
        "iterations": int(bp.optimizer.iterations.numpy()),
        "variables": {v.name: np.asarray(v.numpy(), np.float64).ravel().tolist() for v in bp.variables},
    }))


if __name__ == "__main__":
    main()
