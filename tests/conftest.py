"""Shared fixtures: small real data (scikit-learn's digits, offline) and models."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

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


def small_cnn():
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])
