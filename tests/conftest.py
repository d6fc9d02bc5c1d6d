"""Shared fixtures: small real data (scikit-learn's digits, offline) and models."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest
import tensorflow as tf
import tf_keras as keras

from tests.support.models import bn_add_cnn, small_cnn, train_frozen

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
