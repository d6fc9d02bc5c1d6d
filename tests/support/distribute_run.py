"""Helper for test_distribute.py, run as a subprocess (not collected by pytest).

TensorFlow only accepts logical device configuration before it initializes its
devices, so the two-CPU setup needs a fresh interpreter. This script trains the
same bit-pruned model twice in one process, with the same seed, initial
weights, data and global batch: once on one device (no strategy) and once under
``tf.distribute.MirroredStrategy`` over two logical CPUs. It prints one JSON
line with the losses, the bitlengths and every variable of both runs.

``multiworker_run.py`` imports :func:`data`, :func:`initial_weights` and
:func:`train` to train the same model under ``MultiWorkerMirroredStrategy``
(importing this module configures no devices).

Usage: [TFBP_KERAS=3] python distribute_run.py [steps] [global_batch]
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
# TFBP_KERAS=3: the same runs with a Keras 3 (import keras) model.
if os.environ.get("TFBP_KERAS") == "3":
    import keras  # noqa: E402
else:
    import tf_keras as keras  # noqa: E402

import tf_bitpruning as tfbp  # noqa: E402

STEPS, BATCH = 6, 32  # the defaults of the command line


def data(steps=STEPS, batch=BATCH):
    """The first ``steps`` global batches of digits: x (N, 8, 8, 1) in [0, 1], y."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x[: steps * batch] / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    return x, y[: steps * batch].astype("int32")


def float_model():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])


def initial_weights():
    keras.utils.set_random_seed(0)
    return float_model().get_weights()


def train(initial_weights, x, y, batch=BATCH, strategy=None):
    """Bit-prunes the model (λ adapted by BitBudget) for one epoch of ``x`` in global
    batches of ``batch``; returns loss, λ, bitlengths, variables and predictions."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    scope = strategy.scope() if strategy is not None else tf.name_scope("single")
    with scope:
        model = float_model()
        model.set_weights(initial_weights)
        bp = tfbp.bitprune_model(model, regularization=0.5)
        # A fast bitlength rate so that bitlengths move visibly in a few steps.
        bp.compile(keras.optimizers.Adam(0.02), "sparse_categorical_crossentropy")
    # BitBudget adapts λ every batch; under the strategy it must do exactly the same.
    budget = tfbp.BitBudget(target_bits=4.0)
    history = bp.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[budget])
    probs = bp.predict(x[:batch], batch_size=batch, verbose=0)
    frozen = tfbp.freeze_bitlengths(bp)  # of MirroredVariables under the strategy
    return {
        "frozen_bits": tfbp.bitlengths(frozen),
        "loss": float(history.history["loss"][-1]),
        "bit_lambda": float(history.history["bit_lambda"][-1]),
        "bits": tfbp.bitlengths(bp),
        "variables": {getattr(v, "path", v.name): np.asarray(v.numpy(), np.float64).ravel().tolist()
                      for v in bp.variables},
        "predictions": np.asarray(probs, np.float64).ravel().tolist(),
    }


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else STEPS
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else BATCH
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    tf.config.experimental.enable_op_determinism()
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    x, y = data(steps, batch)
    initial = initial_weights()
    single = train(initial, x, y, batch)
    strategy = tf.distribute.MirroredStrategy(devices)
    mirrored = train(initial, x, y, batch, strategy)
    print(json.dumps({"devices": devices, "replicas": strategy.num_replicas_in_sync,
                      "single": single, "mirrored": mirrored}))


if __name__ == "__main__":
    main()
