"""The small models the examples, benchmarks and tests share."""

from __future__ import annotations

import tf_keras as keras

L = keras.layers


def small_cnn() -> keras.Model:
    """The 8x8 digits CNN: two convolutions and a classifier, 9.9k parameters."""
    return keras.Sequential([
        keras.Input((8, 8, 1)),
        L.Conv2D(16, 3, padding="same", activation="relu"),
        L.MaxPooling2D(),
        L.Conv2D(32, 3, padding="same", activation="relu"),
        L.Flatten(),
        L.Dense(10, activation="softmax"),
    ])


def cnn(input_shape, classes: int = 10) -> keras.Model:
    """A Conv-BN-ReLU CNN for any image size (the end-to-end example's model)."""
    inp = keras.Input(input_shape)
    x = L.Conv2D(16, 3, padding="same")(inp)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
    x = L.MaxPooling2D()(x)
    x = L.Conv2D(32, 3, padding="same", activation="relu")(x)
    x = L.MaxPooling2D()(x) if input_shape[0] > 8 else x
    x = L.Flatten()(x)
    out = L.Dense(classes, activation="softmax")(x)
    return keras.Model(inp, out)
