"""Shared fixtures: small real data (scikit-learn's digits, offline) and models."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest
import tensorflow as tf
import tf_keras as keras

from examples.models import small_cnn  # noqa: F401  (tests import it from here)

# Reproducible numbers: TF's CPU kernels are not deterministic by default.
tf.config.experimental.enable_op_determinism()


@pytest.fixture(scope="session")
def digits():
    """8x8 handwritten digits: (x_train, y_train, x_test, y_test), x in [0, 1]."""
    from examples import data

    return data.load("digits")


@pytest.fixture(autouse=True)
def _seed():
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    yield
    # A global dtype policy left behind would silently change every later test.
    policy = keras.mixed_precision.global_policy().name
    if policy != "float32":
        keras.mixed_precision.set_global_policy("float32")
        pytest.fail(f"the test left Keras' global dtype policy at {policy!r}; restore float32")


def bn_add_cnn():
    """Functional model with BatchNormalization and Add: Conv-BN-ReLU, a
    DepthwiseConv-BN-ReLU-Conv1x1-BN branch added back, ReLU, Dense logits."""
    L = keras.layers
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = L.ReLU()(L.BatchNormalization(momentum=0.9)(x))
    y = L.DepthwiseConv2D(3, padding="same")(x)
    y = L.ReLU()(L.BatchNormalization(momentum=0.9)(y))
    y = L.BatchNormalization(momentum=0.9)(L.Conv2D(16, 1)(y))
    z = L.ReLU()(L.Add()([x, y]))
    z = L.Flatten()(L.MaxPooling2D()(z))
    return keras.Model(inputs, L.Dense(10)(z))


def train_frozen(model, digits, weight_bits, activation_bits, epochs=(3, 2)):
    """Bit-prunes ``model`` on digits, sets the given bitlengths (one per weight /
    activation tensor, in ``quantized_tensors`` order), freezes and fine-tunes it."""
    import tf_bitpruning as tfbp
    from tf_bitpruning import costs

    xtr, ytr, _, _ = digits
    logits = model.layers[-1].activation is keras.activations.linear
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=logits)
    bp = tfbp.bitprune_model(model, regularization=0.02, bits_lr_multiplier=20.0)
    bp.compile(keras.optimizers.Adam(3e-3), loss, metrics=["accuracy"])
    bp.fit(xtr, ytr, epochs=epochs[0], batch_size=64, verbose=0)
    plan = {"weights": list(weight_bits), "activations": list(activation_bits)}
    for t in costs.quantized_tensors(bp):
        b = plan[t.kind].pop(0)
        t.bits_variable.assign(tf.fill(t.bits_variable.shape, b / t.quantizer.bits_lr_multiplier))
    assert not plan["weights"] and not plan["activations"], "one bitlength per tensor"
    frozen = tfbp.freeze_bitlengths(bp)
    frozen.compile(keras.optimizers.Adam(5e-4), loss, metrics=["accuracy"])
    frozen.fit(xtr, ytr, epochs=epochs[1], batch_size=64, verbose=0)
    return frozen


@pytest.fixture(scope="session")
def frozen_models(digits):
    """Trained, frozen bit-pruned models shared by the export and persistence tests:
    ``{"sequential": small_cnn at 2/6/4-bit weights, "functional": bn_add_cnn at
    5/4/3/6-bit weights}`` (≤ 4-bit kernels of every kind: conv, depthwise, dense)."""
    # Session fixtures are built before a test's own clear_session (_seed): clear here
    # too, so that layer names ("conv2d", ...) do not depend on which tests ran first.
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    seq = train_frozen(small_cnn(), digits, [2, 6, 4], [8, 4, 3, 8])
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    func = train_frozen(bn_add_cnn(), digits, [5, 4, 3, 6], [8, 4, 3, 5, 6, 8])
    return {"sequential": seq, "functional": func}
